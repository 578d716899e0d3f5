"""Server-Sent Events: an incremental parser (bytes in, complete `data` payloads out) and the framing.

Upstream chunks may split an event, a line, or a `\r\n` pair anywhere; the parser keeps
the unfinished tail and yields an event only once its blank line has arrived. Its work is
linear in its input: each chunk is appended once and searched from where the last search
stopped, however many chunks one event spans. An unfinished event larger than its bound
raises EventTooLarge, so an upstream cannot make the gateway buffer without end.
"""
from __future__ import annotations

# Large enough for any event vLLM sends; the gateway passes SLUICE_MAX_SSE_EVENT_BYTES.
DEFAULT_MAX_EVENT_BYTES = 32 * 1024 * 1024


class EventTooLarge(ValueError):
    """An event grew past the parser's bound before its end arrived."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event is larger than {limit} bytes")
        self.limit = limit


def sse_event(payload: bytes) -> bytes:
    """Frame a JSON payload as one SSE event."""
    return b"data: " + payload + b"\n\n"


class SSEParser:
    """Feed it raw bytes as they arrive; it returns the data of each event completed so far."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending = bytearray()  # the unfinished event, line ends already made \n
        self._searched = 0  # bytes of _pending known to hold no event end (b"\n\n")
        self._after_cr = False  # the last chunk ended with \r: a \n opening the next is its pair

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parse one more piece of the stream; return the data payloads of finished events."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the second half of a \r\n split across chunks
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending = self._pending
        pending += chunk
        events = []
        start, search_from = 0, max(self._searched - 1, 0)  # an end may straddle the old tail
        while (end := pending.find(b"\n\n", search_from)) != -1:
            if end - start > self.max_event_bytes:
                raise EventTooLarge(self.max_event_bytes)
            data = self._event_data(bytes(pending[start:end]))
            if data is not None:
                events.append(data)
            start = search_from = end + 2
        if start:
            del pending[:start]  # once per chunk: what is left is one unfinished event
        self._searched = len(pending)
        if len(pending) > self.max_event_bytes:
            raise EventTooLarge(self.max_event_bytes)
        return events

    @property
    def has_pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._pending.strip())

    @staticmethod
    def _event_data(block: bytes) -> bytes | None:
        """The joined `data:` lines of one event; None for events without data (comments)."""
        if block.startswith(b"data: ") and b"\n" not in block:
            return block[6:]  # the common case, one data line: no splitting needed
        lines = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                lines.append(value[1:] if value.startswith(b" ") else value)
        return b"\n".join(lines) if lines else None


class EventBlockParser(SSEParser):
    """Like SSEParser, but returns each event's whole block (its `event:` and `data:` lines), line ends as \\n.

    For streams whose events are named (the Responses API): the name is part of what is relayed.
    """

    @staticmethod
    def _event_data(block: bytes) -> bytes | None:
        return block if b"data:" in block else None  # comments (`: ping`) carry nothing to relay


def split_event(block: bytes) -> tuple[bytes, bytes]:
    """An event block's name (b"" when it has none) and its joined data lines."""
    name, data = b"", []
    for line in block.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    return name, b"\n".join(data)


def named_event(name: bytes, data: bytes) -> bytes:
    """Frame one named SSE event."""
    return b"event: " + name + b"\ndata: " + data + b"\n\n"
