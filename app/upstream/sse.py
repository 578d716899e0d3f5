"""Server-Sent Events: an incremental parser (bytes in, complete `data` payloads out) and the framing.

Upstream chunks may split an event, a line, or a `\r\n` pair anywhere; the parser keeps
the unfinished tail and yields an event only once its blank line has arrived.
"""
from __future__ import annotations


def sse_event(payload: bytes) -> bytes:
    """Frame a JSON payload as one SSE event."""
    return b"data: " + payload + b"\n\n"


class SSEParser:
    """Feed it raw bytes as they arrive; it returns the data of each event completed so far."""

    def __init__(self) -> None:
        self._pending = b""  # the unfinished event, line ends already made \n
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
        *complete, self._pending = (self._pending + chunk).split(b"\n\n")
        events = []
        for block in complete:
            data = self._event_data(block)
            if data is not None:
                events.append(data)
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
