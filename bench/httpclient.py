"""A minimal HTTP/1.1 keep-alive client on asyncio streams, lean enough to load a proxy from one core.

It does only what the load generator needs: send prepared request bytes, read a status,
a Content-Length or chunked body, and hand over a streamed body piece by piece with the
time each piece arrived. No redirects, no TLS, no compression.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from time import perf_counter

# The gateway's own decoder of chunked bodies (it also checks the framing and waits for the
# last CRLF, so a kept-alive connection is left at the next response).
from app.upstream.http import ChunkedDecoder

_HEAD_END = b"\r\n\r\n"
_READ_SIZE = 64 * 1024


class HttpError(ConnectionError):
    """The server answered something this client cannot read as HTTP/1.1 (treated as a broken connection)."""


def build_request(method: str, host: str, port: int, path: str, body: dict | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one request; built once and sent many times."""
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: */*"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


@dataclass
class Head:
    """Status line and the headers this client acts on."""

    status: int
    length: int | None  # Content-Length; None when chunked or delimited by EOF
    chunked: bool
    close: bool  # the server will close the connection after this response


def parse_head(raw: bytes) -> Head:
    """Parse a response head (status line and headers, without the blank line)."""
    lines = raw.split(b"\r\n")
    try:
        status = int(lines[0][9:12])
    except ValueError:
        raise HttpError(f"not an HTTP status line: {lines[0][:80]!r}") from None
    length, chunked, close = None, False, lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    return Head(status, length, chunked, close)


class Connection:
    """One keep-alive connection; a request's response must be read before the next is sent."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect (asyncio sets TCP_NODELAY on TCP sockets)."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=_READ_SIZE * 4)

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def close(self) -> None:
        """Close like a client that goes away: a FIN, nothing more sent."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, request: bytes) -> None:
        """Write a request (connecting first if needed)."""
        if not self.is_open:
            await self.open()
        assert self.writer is not None
        self.writer.write(request)

    async def read_head(self) -> Head:
        """Wait for the response head."""
        assert self.reader is not None
        try:
            raw = await self.reader.readuntil(_HEAD_END)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("server closed the connection before answering") from None
        return parse_head(raw[:-4])

    async def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        """Send a request and read its whole response: (status, body)."""
        await self.send(request)
        head = await self.read_head()
        body = await self._read_body(head)
        if head.close:
            self.close()
        return head.status, body

    async def _read_body(self, head: Head) -> bytes:
        assert self.reader is not None
        if head.length is not None:
            return await self.reader.readexactly(head.length)
        if head.chunked:
            decoder, parts = ChunkedDecoder(), []
            while not decoder.done:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    raise ConnectionResetError("server closed the connection inside a chunked body")
                parts.append(decoder.feed(data))
            return b"".join(parts)
        head.close = True
        return await self.reader.read()

    async def body_pieces(self, head: Head) -> AsyncIterator[tuple[float, bytes]]:
        """The body as it arrives: (perf_counter time of arrival, payload bytes), until its end."""
        assert self.reader is not None
        reader = self.reader
        decoder = ChunkedDecoder() if head.chunked else None
        remaining = head.length
        while True:
            if remaining == 0 or (decoder is not None and decoder.done):
                return
            data = await reader.read(_READ_SIZE)
            now = perf_counter()
            if not data:
                if decoder is None and remaining is None:
                    return  # body delimited by the end of the connection
                raise ConnectionResetError("server closed the connection inside the body")
            if decoder is not None:
                data = decoder.feed(data)
            elif remaining is not None:
                remaining -= len(data)
            if data:
                yield now, data
