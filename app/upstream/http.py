"""HTTP/1.1 to one upstream with urllib3's connection pool, and its responses read as they arrive.

requests (a Session over the same pool) costs about three times more CPU per call than
urllib3 alone, on the path every generation takes. Health checks, model lists and metrics
take the same pool, so that every body read whole has the same bound (`max_body_bytes`).

A streamed body is read from the connection's buffered reader with `read1`: whatever the
socket holds at that moment, several chunks of the chunked coding at once when the
upstream got ahead of the gateway. `ChunkedDecoder` takes their framing off, so that the
relay writes, in one piece, every event that arrived together.
"""
from __future__ import annotations

import functools
import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

READ_SIZE = 65536  # the most one read takes from the socket's buffer
# The buffer an upstream response is read through, which every open stream holds for its whole
# life: http.client's 8 KiB would be a sixth of a stream's memory. Events are a few hundred
# bytes; when more is waiting than this holds, the next read takes it at once.
RESPONSE_BUFFER_BYTES = 2048
MAX_SIZE_LINE = 1024  # a chunk-size line longer than this is garbage, not a size
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # a body read whole; the gateway passes SLUICE_MAX_UPSTREAM_BODY_BYTES
# What a failing upstream connection raises from here (mapped in app/upstream/errors.py).
TRANSPORT_ERRORS = (HTTPError, OSError)


class BodyCut(HTTPError):
    """The upstream's body ended, or broke its framing, before its end."""


class BodyTooLarge(HTTPError):
    """A body read whole (a blocking answer, an error's) is longer than the gateway reads."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upstream's body is longer than {limit} bytes")
        self.limit = limit


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer coding, undone incrementally: raw bytes in, body bytes out."""

    def __init__(self) -> None:
        self._pending = b""  # an unfinished size line, or a chunk's closing CRLF not yet complete
        self._left = 0  # bytes of the current chunk's data still to come
        self._closing = False  # a chunk's data is over: its CRLF comes next
        self._trailer = False  # the last (zero) chunk was seen: trailer lines until an empty one
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes in `data` (all of them, whatever chunks they belong to)."""
        buf = self._pending + data if self._pending else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._left -= take
                self._closing = not self._left
            elif self._closing:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise BodyCut("a chunk of the upstream's body does not end with CRLF")
                pos, self._closing = pos + 2, False
            else:
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    if end - pos > MAX_SIZE_LINE:
                        raise BodyCut("the upstream sent a chunk-size line that never ends")
                    break
                line, pos = buf[pos:newline].rstrip(b"\r"), newline + 1
                self._line(line)
        self._pending = buf[pos:] if not self.done else b""
        return b"".join(out) if len(out) != 1 else out[0]

    def _line(self, line: bytes) -> None:
        if self._trailer:
            self.done = not line
            return
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise BodyCut(f"the upstream sent {line[:40]!r} where a chunk size belongs") from None
        if size < 0:
            raise BodyCut("the upstream sent a negative chunk size")
        self._left, self._trailer = size, size == 0


class Response:
    """An open upstream response: status, headers, and the body read once, whole or as it arrives."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, max_body_bytes: int | None = None) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers
        self.max_body_bytes = max_body_bytes  # the most `content` reads; None: no bound (a test's)
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        """The whole body (an error's, or a blocking answer), read once; BodyTooLarge past max_body_bytes."""
        if self._content is None:
            self._content = self._read_whole()
        return self._content

    @property
    def text(self) -> str:
        """The whole body as text (a metrics page: UTF-8, as Prometheus's text format is)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The whole body, parsed (ValueError when it is not JSON)."""
        return json.loads(self.content)

    def _read_whole(self) -> bytes:
        limit = self.max_body_bytes
        if limit is None:
            return self.raw.data
        declared = self.headers.get("Content-Length", "")
        if declared.isdigit():
            if int(declared) > limit:
                raise BodyTooLarge(limit)  # refused before a byte of it is read
            return self.raw.data  # http.client reads no more than the length declared
        # Chunked, or up to the connection's close: read as it comes, and stop past the bound.
        pieces, size = [], 0
        for piece in self.iter_content():
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(limit)
            pieces.append(piece)
        return b"".join(pieces)

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body as it arrives, each piece everything the socket had (`chunk_size` is ignored)."""
        reader = _buffered_reader(self.raw)
        if reader is None or not getattr(self.raw, "chunked", False):
            yield from self._pieces()
            return
        decoder = ChunkedDecoder()
        while not decoder.done:
            # peek() waits in the reader's own buffer; read1 alone would hold a new READ_SIZE
            # buffer while it waits, for every stream open between two events.
            reader.peek()
            data = reader.read1(READ_SIZE)
            if not data:
                raise BodyCut("the upstream closed the connection in the middle of its body")
            body = decoder.feed(data)
            if decoder.done:
                # Back to the pool before the last body goes out: a relay stops asking at [DONE],
                # and an upstream that ends its body in the same read would otherwise be dropped
                # and reconnected (a new connection and address lookup for each stream).
                self._finished()
            if body:
                yield body

    def _pieces(self) -> Iterator[bytes]:
        """A body of known length, or one a test made up: urllib3 reads it."""
        while True:
            piece = self.raw.read1(READ_SIZE)
            if not piece:
                return
            yield piece

    def _finished(self) -> None:
        # Read to its end past urllib3's back: tell http.client the response is over, then
        # give the connection back to the pool for the next request.
        original = getattr(self.raw, "_fp", None)
        if original is not None:
            original.close()
        self.raw.release_conn()

    def close(self) -> None:
        """Release a finished response's connection; drop an unfinished one (the upstream sees it gone)."""
        self.raw.close()  # closes the connection unless it went back to the pool already
        self.raw.release_conn()


def _buffered_reader(raw: urllib3.BaseHTTPResponse) -> Any:
    """The connection's buffered reader under http.client's response, or None (a made-up response)."""
    original = getattr(raw, "_fp", None)  # http.client.HTTPResponse for a real connection
    return getattr(original, "fp", None)


class _SmallBufferResponse(http.client.HTTPResponse):
    """http.client's response, read through a RESPONSE_BUFFER_BYTES buffer."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # http.client's own reader: nothing read through it yet
        self.fp = sock.makefile("rb", RESPONSE_BUFFER_BYTES)


@functools.cache  # one subclass per connection class, however many pools are made
def _small_buffer_connections(connection_class: type) -> type:
    """`connection_class` (urllib3's HTTP or HTTPS connection) with responses read through a small buffer."""
    return type(f"SmallBuffer{connection_class.__name__}", (connection_class,),
                {"response_class": _SmallBufferResponse})


class Transport:
    """One pool of keep-alive connections to one upstream, per worker process (made after the fork)."""

    def __init__(self, base_url: str, *, pool_size: int, headers: dict[str, str], max_body_bytes: int) -> None:
        self.base_url = base_url
        self.max_body_bytes = max_body_bytes  # the most a body read whole may hold
        self.base_path = urllib3.util.parse_url(base_url).path or ""  # a server mounted under a path
        self.pool_size = pool_size
        self.headers = {"Content-Type": "application/json", "Accept": "*/*", **headers}
        self.get_headers = {"Accept": "*/*", **headers}
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._pid = 0

    @property
    def pool(self) -> urllib3.HTTPConnectionPool:
        """This process's pool (a new one after a fork: a pool inherited from the master would share sockets)."""
        if self._pool is None or self._pid != os.getpid():
            # block=False: past pool_size a connection is made anyway, and not kept afterwards.
            self._pool = urllib3.connection_from_url(self.base_url, maxsize=self.pool_size, block=False,
                                                     retries=False)
            self._pool.ConnectionCls = _small_buffer_connections(self._pool.ConnectionCls)
            self._pid = os.getpid()
        return self._pool

    def post_json(self, path: str, payload: dict[str, Any], extra_headers: dict[str, str] | None,
                  timeout: tuple[float, float]) -> Response:
        """POST `payload` as JSON; the response's headers are read, its body is not."""
        headers = {**self.headers, **extra_headers} if extra_headers else self.headers
        body = json.dumps(payload, allow_nan=False).encode()
        return send(self.pool, "POST", self.base_path + path, body, headers, timeout, self.max_body_bytes)

    def get(self, path: str, timeout: tuple[float, float]) -> Response:
        """GET `path` (a health check, a model list, metrics); the response's headers are read, its body is not."""
        return send(self.pool, "GET", self.base_path + path, None, self.get_headers, timeout, self.max_body_bytes)


def send(pool: urllib3.HTTPConnectionPool, method: str, path: str, body: bytes | None, headers: dict[str, str],
         timeout: tuple[float, float], max_body_bytes: int | None = None) -> Response:
    """One request on `pool`, never retried or redirected (failover is the pool's job, app/upstream/pool.py)."""
    raw = pool.urlopen(method, path, body=body, headers=headers, retries=False, redirect=False,
                       timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]), preload_content=False,
                       release_conn=False, assert_same_host=False)
    return Response(raw, max_body_bytes)
