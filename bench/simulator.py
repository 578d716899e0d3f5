"""Fast vLLM-compatible OpenAI HTTP server, used as a stand-in upstream by tests and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from bench import simulator_routes

try:  # uvloop is optional; the stdlib loop is fast enough for tests.
    import uvloop  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

FAULTS: tuple[str, ...] = (
    "refuse",
    "hang_headers",
    "pause_mid_stream",
    "malformed_sse",
    "invalid_json_chunk",
    "error_event",
    "cut_mid_chunk",
    "status_400",
    "status_429",
    "status_500",
    "status_503",
    "not_json",
    "huge",
    "huge_chunked",
)

# Faults that act between tokens; they fire after this many tokens have been sent.
_MID_STREAM_FAULTS = frozenset(
    {"pause_mid_stream", "malformed_sse", "invalid_json_chunk", "error_event", "cut_mid_chunk"}
)
_FAULT_AFTER_TOKENS = 2

# OpenAI-client-style error type names, which is what vLLM puts in error.type.
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

_HUGE_BYTES = 20 * 1024 * 1024
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_READ_SIZE = 64 * 1024

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _dumps(obj: Any) -> bytes:
    """Serialise compactly, like Starlette's JSONResponse and pydantic's model_dump_json."""
    return _JSON.encode(obj).encode("utf-8")


@dataclasses.dataclass
class SimConfig:
    """Server settings; every field has a matching CLI flag."""

    host: str = "127.0.0.1"
    port: int = 0
    models: tuple[str, ...] = ("sim-model",)
    ttft: float = 0.0
    itl: float = 0.0
    max_tokens_cap: int = 4096
    max_num_seqs: int = 256
    max_model_len: int = 2048
    fault: str | None = None
    pause: float | None = None  # pause_mid_stream duration; None pauses until the client leaves
    backlog: int = 4096
    loop: str = "auto"  # "auto" (uvloop if importable), "uvloop" or "asyncio"
    runner: str = "generate"  # as vLLM's --runner: "pooling" serves embeddings and scores, not generations

    def __post_init__(self) -> None:
        """Normalise and validate so that bad settings fail at construction time."""
        if isinstance(self.models, str):
            self.models = tuple(m.strip() for m in self.models.split(",") if m.strip())
        self.models = tuple(self.models)
        if not self.models:
            raise ValueError("at least one model name is required")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; choose from {', '.join(FAULTS)}")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise ValueError("loop must be auto, uvloop or asyncio")
        if self.runner not in simulator_routes.RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(simulator_routes.RUNNERS)}")
        if self.loop == "uvloop" and uvloop is None:
            raise ValueError("loop=uvloop requested but uvloop is not installed")

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """Create the event loop this config asks for."""
        if self.loop != "asyncio" and uvloop is not None:
            return uvloop.new_event_loop()
        return asyncio.new_event_loop()


@dataclasses.dataclass
class SimStats:
    """Live counters, mutated only on the simulator's loop; readers in other threads see plain ints."""

    requests_total: int = 0  # generation requests received (completions + chat), any outcome
    active: int = 0  # gauge: generation requests in flight (received, response not finished)
    running: int = 0  # gauge: requests producing tokens
    waiting: int = 0  # gauge: requests queued for a slot or in their ttft wait
    completed: int = 0  # full response sent
    cancelled: int = 0  # client disconnected before the response finished
    failed: int = 0  # error status, injected fault, or aborted by the simulator
    tokens_generated: int = 0
    connections_open: int = 0  # gauge
    connections_total: int = 0
    # Wall-clock time (time.time()) of the last cancellation, 0.0 before any: benchmarks
    # subtract the moment their client left to time "client gone -> upstream closed".
    last_cancel_at: float = 0.0

    _GAUGES = ("active", "running", "waiting", "connections_open")

    def as_dict(self) -> dict[str, float]:
        """Return a point-in-time copy."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def reset(self) -> None:
        """Zero the cumulative counters; gauges keep describing work that is still in flight."""
        for f in dataclasses.fields(self):
            if f.name not in self._GAUGES:
                setattr(self, f.name, 0)


class _ApiError(Exception):
    """An error answered with vLLM's {"error": {...}} body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed the connection or a write to it failed."""


class _BadHttp(Exception):
    """The request could not be parsed as HTTP/1.1; answer and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Request:
    """A parsed HTTP request."""

    __slots__ = ("method", "path", "headers", "body", "keep_alive")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _Conn:
    """Per-connection state: our own read buffer so a watcher can read ahead without losing bytes."""

    __slots__ = ("reader", "writer", "task", "buf", "eof", "busy", "gone", "watch")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]) -> None:
        self.reader = reader
        self.writer = writer
        self.task = task
        self.buf = bytearray()
        self.eof = False
        self.busy = False  # a request is being answered; an EOF now means the client gave up
        self.gone = False  # the watcher cancelled the task because the client left
        self.watch: asyncio.Task[None] | None = None


class _Gen:
    """The validated parameters of one generation request."""

    __slots__ = (
        "chat", "stream", "model", "n", "finish", "prompt_tokens", "include_usage",
        "rid", "created", "ttft", "itl", "fault", "pause", "extra",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class _Ticker:
    """Groups timed wake-ups into 1 ms buckets: one loop timer per bucket instead of one per stream."""

    # With thousands of streams the per-event TimerHandle heap push/pop (Python-level comparisons)
    # is a visible share of CPU; a dict of buckets makes scheduling an append.

    __slots__ = ("loop", "buckets")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, list[Callable[[], None]]] = {}

    def call_at(self, when: float, cb: Callable[[], None]) -> None:
        """Run cb at or just after `when` (rounded up to the next millisecond, never early)."""
        key = math.ceil(when * 1000.0)
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = bucket = []
            self.loop.call_at(key / 1000.0, self._fire, key)
        bucket.append(cb)

    def _fire(self, key: int) -> None:
        """Run every callback of one bucket."""
        for cb in self.buckets.pop(key, ()):
            cb()


class _Emitter:
    """Emits one stream's token events from timer callbacks."""

    # A callback per event instead of a task wake-up (future + timer + task step) cuts the Python
    # cost per event, which is what limits how many concurrent streams one core can pace.

    __slots__ = ("loop", "ticker", "transport", "render", "stats", "itl", "t0", "i", "last", "fut", "dead",
                 "must_drain")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ticker: _Ticker,
        transport: asyncio.WriteTransport,
        render: Callable[[int], bytes],
        stats: SimStats,
        itl: float,
    ) -> None:
        self.loop = loop
        self.ticker = ticker
        self.transport = transport
        self.render = render
        self.stats = stats
        self.itl = itl
        self.t0 = loop.time()  # token i is due at t0 + itl * (i - 1): absolute, so lag never accumulates
        self.i = 1
        self.last = 0
        self.fut: asyncio.Future[int] | None = None
        self.dead = False
        self.must_drain = False

    def run(self, first: int, last: int) -> asyncio.Future[int]:
        """Emit tokens first..last on schedule; resolves to the next token index (early if the socket is full)."""
        self.i, self.last, self.must_drain = first, last, False
        self.fut = self.loop.create_future()
        self._schedule()
        return self.fut

    def restart_clock(self, next_i: int) -> None:
        """Make token next_i due one itl from now."""
        self.t0 = self.loop.time() - self.itl * (next_i - 2)

    def cancel(self) -> None:
        """Stop emitting (client gone or request aborted); a pending callback becomes a no-op."""
        self.dead = True

    def _schedule(self) -> None:
        """Arm the wake-up for token self.i; token 1 and itl == 0 go out on the next loop pass."""
        if self.itl > 0 and self.i > 1:
            self.ticker.call_at(self.t0 + self.itl * (self.i - 1), self._emit)
        else:
            self.loop.call_soon(self._emit)

    def _emit(self) -> None:
        """Write one event as its own HTTP chunk, straight to the socket."""
        fut = self.fut
        if self.dead or fut is None or fut.done():  # the awaiting request was cancelled
            return
        tr = self.transport
        if tr.is_closing():
            fut.set_exception(_ClientGone())
            return
        payload = self.render(self.i)
        try:
            tr.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        except Exception:  # never let one stream's failure skip the other callbacks in its bucket
            fut.set_exception(_ClientGone())
            return
        self.stats.tokens_generated += 1
        self.i += 1
        if self.i > self.last:
            fut.set_result(self.i)
        elif tr.get_write_buffer_size() > _READ_SIZE:
            # The client reads slower than we produce: let the coroutine await drain() (backpressure).
            self.must_drain = True
            fut.set_result(self.i)
        else:
            self._schedule()


class SimServer:
    """The asyncio HTTP/1.1 server; must be started and used on one event loop."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        # Per-model [running, waiting] so /metrics can label gauges like vLLM does.
        self._model_gauges: dict[str, list[int]] = {m: [0, 0] for m in config.models}
        self._server: asyncio.base_events.Server | None = None
        self._sem: asyncio.Semaphore | None = None
        self._ticker: _Ticker | None = None
        self._conns: set[_Conn] = set()
        self._date = b""
        self._date_at = 0
        self._huge_text: str | None = None
        self.host = config.host
        self.port = config.port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8001."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._sem = asyncio.Semaphore(self.config.max_num_seqs)
        self._ticker = _Ticker(asyncio.get_running_loop())
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, backlog=self.config.backlog,
            limit=_READ_SIZE * 2,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.writer.transport.abort()
            conn.task.cancel()
        tasks = [c.task for c in self._conns]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ connection loop

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one keep-alive connection until either side closes it."""
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(reader, writer, task)
        self._conns.add(conn)
        st = self.stats
        st.connections_open += 1
        st.connections_total += 1
        try:
            while True:
                try:
                    req = await self._read_request(conn)
                except _BadHttp as e:
                    self._write_simple(conn, e.status, {"detail": str(e)}, close=True)
                    break
                if req is None:
                    break
                keep = await self._dispatch(conn, req)
                if not keep or conn.eof:
                    break
        except (ConnectionError, OSError, _ClientGone):
            pass  # the peer vanished between requests; nothing to answer
        except asyncio.CancelledError:
            pass  # server shutdown
        finally:
            st.connections_open -= 1
            self._conns.discard(conn)
            if conn.watch is not None:
                conn.watch.cancel()
            if not writer.transport.is_closing():
                writer.close()

    async def _read_more(self, conn: _Conn) -> bool:
        """Append the next bytes from the socket to conn.buf; False at EOF."""
        if conn.watch is not None:
            # The watcher owns reader.read() until it has processed its cancellation.
            conn.watch.cancel()
            while not conn.watch.done():
                await asyncio.sleep(0)
            conn.watch = None
        if conn.eof:
            return False
        try:
            data = await conn.reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            conn.eof = True
            return False
        conn.buf += data
        return True

    async def _read_request(self, conn: _Conn) -> _Request | None:
        """Parse one request from the connection; None when the client closed it cleanly."""
        buf = conn.buf
        start = 0
        while True:
            while buf[:2] == b"\r\n":  # tolerate stray CRLFs between requests (RFC 9112 2.2)
                del buf[:2]
            idx = buf.find(b"\r\n\r\n", start)
            if idx >= 0:
                break
            if len(buf) > _MAX_HEAD:
                raise _BadHttp(431, "Request header fields too large")
            start = max(0, len(buf) - 3)
            if not await self._read_more(conn):
                return None
        head = bytes(buf[:idx]).decode("latin-1")
        del buf[: idx + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadHttp(400, "Invalid HTTP request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadHttp(400, "Invalid HTTP header")
            headers[name.strip().lower()] = value.strip()
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in conn_hdr
        else:
            keep_alive = "close" not in conn_hdr

        if headers.get("expect", "").lower() == "100-continue":
            # curl waits for this before sending bodies > 1 MB.
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        te = headers.get("transfer-encoding", "").lower()
        if te:
            if te != "chunked":
                raise _BadHttp(501, "Unsupported transfer-encoding")
            body = await self._read_chunked(conn)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadHttp(400, "Invalid content-length") from None
            if length < 0 or length > _MAX_BODY:
                raise _BadHttp(413, "Request body too large")
            while len(buf) < length:
                if not await self._read_more(conn):
                    return None
            body = bytes(buf[:length])
            del buf[:length]
        path = target.split("?", 1)[0]
        return _Request(method, path, headers, body, keep_alive)

    async def _read_line(self, conn: _Conn) -> bytes:
        """Read one CRLF-terminated line (for chunked bodies)."""
        buf = conn.buf
        while True:
            idx = buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(buf[:idx])
                del buf[: idx + 2]
                return line
            if len(buf) > _MAX_HEAD:
                raise _BadHttp(400, "Chunk header too long")
            if not await self._read_more(conn):
                raise _ClientGone()

    async def _read_chunked(self, conn: _Conn) -> bytes:
        """Decode a chunked request body; trailers are read and ignored."""
        out = bytearray()
        buf = conn.buf
        while True:
            line = await self._read_line(conn)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadHttp(400, "Invalid chunk size") from None
            if size == 0:
                while await self._read_line(conn):
                    pass
                return bytes(out)
            if len(out) + size > _MAX_BODY:
                raise _BadHttp(413, "Request body too large")
            while len(buf) < size + 2:
                if not await self._read_more(conn):
                    raise _ClientGone()
            out += buf[:size]
            del buf[: size + 2]

    # ------------------------------------------------------------------ disconnect watching

    def _arm(self, conn: _Conn) -> None:
        """Watch for EOF while the request waits, so a client disconnect aborts it at once (like vLLM)."""
        conn.busy = True
        if conn.eof:
            # The client already left (seen by an earlier watcher): abort at the next await.
            conn.gone = True
            conn.task.cancel()
        elif conn.watch is None:
            conn.watch = asyncio.get_running_loop().create_task(self._watch(conn))

    def _disarm(self, conn: _Conn) -> None:
        """Stop treating EOF as a cancellation; _read_more waits for the watcher to finish."""
        conn.busy = False
        if conn.watch is not None and not conn.watch.done():
            conn.watch.cancel()

    async def _watch(self, conn: _Conn) -> None:
        """Read ahead on the socket; on EOF cancel the in-flight request."""
        try:
            while True:
                try:
                    data = await conn.reader.read(_READ_SIZE)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    conn.eof = True
                    if conn.busy:
                        conn.gone = True
                        conn.task.cancel()
                    return
                conn.buf += data  # a pipelined next request; keep it for the main loop
        except asyncio.CancelledError:
            pass

    # ------------------------------------------------------------------ response helpers

    def _date_header(self) -> bytes:
        """Cache the Date header for a second; formatting it per response is measurable."""
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date

    def _head(
        self,
        status: int,
        content_type: str | None,
        length: int | None,
        extra: list[tuple[str, str]] | None,
        close: bool,
    ) -> bytes:
        """Build a response head; length None means Transfer-Encoding: chunked."""
        parts = [b"HTTP/1.1 %d %s\r\ndate: %s\r\nserver: sluice-sim\r\n" % (
            status, _REASONS.get(status, "Unknown").encode(), self._date_header())]
        if content_type is not None:
            parts.append(b"content-type: %s\r\n" % content_type.encode())
        if length is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            parts.append(b"content-length: %d\r\n" % length)
        if extra:
            for k, v in extra:
                parts.append(f"{k}: {v}\r\n".encode("latin-1", "replace"))
        if close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _write_simple(
        self,
        conn: _Conn,
        status: int,
        obj: Any,
        close: bool = False,
        extra: list[tuple[str, str]] | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        """Write a complete response with a Content-Length body (bytes are sent raw, else JSON)."""
        body = obj if isinstance(obj, bytes) else _dumps(obj)
        if conn.writer.transport.is_closing():
            raise _ClientGone()
        conn.writer.write(self._head(status, content_type, len(body), extra, close) + body)

    async def _send(self, conn: _Conn, data: bytes) -> None:
        """Write and drain, turning a dead peer into _ClientGone."""
        w = conn.writer
        if w.transport.is_closing():
            raise _ClientGone()
        w.write(data)
        try:
            await w.drain()
        except (ConnectionError, OSError):
            raise _ClientGone() from None

    async def _send_chunk(self, conn: _Conn, payload: bytes) -> None:
        """Send one HTTP chunk right away, so each SSE event leaves when it is produced."""
        await self._send(conn, b"%x\r\n%s\r\n" % (len(payload), payload))

    @staticmethod
    def _error_body(status: int, message: str) -> dict[str, Any]:
        """vLLM's error shape."""
        return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "InternalServerError"),
                          "param": None, "code": status}}

    # ------------------------------------------------------------------ routing

    async def _dispatch(self, conn: _Conn, req: _Request) -> bool:
        """Route one request; returns whether the connection may be reused."""
        path, method = req.path, req.method
        close = not req.keep_alive
        if method == "POST" and simulator_routes.handled_here(path, self.config.runner):
            return await simulator_routes.answer(self, conn, req)
        if path == "/v1/completions" or path == "/v1/chat/completions":
            if method != "POST":
                self._write_simple(conn, 405, {"detail": "Method Not Allowed"}, close)
                return req.keep_alive
            return await self._generation(conn, req, chat=path == "/v1/chat/completions")
        if path == "/health":
            if method != "GET":
                self._write_simple(conn, 405, {"detail": "Method Not Allowed"}, close)
            else:
                self._write_simple(conn, 200, b"", close, content_type=None)
        elif path == "/v1/models" and method == "GET":
            created = int(time.time())
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": m,
                 "parent": None, "max_model_len": self.config.max_model_len, "permission": []}
                for m in self.config.models
            ]
            self._write_simple(conn, 200, {"object": "list", "data": data}, close)
        elif path == "/metrics" and method == "GET":
            self._write_simple(conn, 200, self._metrics_text(), close,
                               content_type="text/plain; version=0.0.4; charset=utf-8")
        elif path == "/openapi.json" and method == "GET":
            self._write_simple(conn, 200, simulator_routes.openapi_document(self.config.runner), close)
        elif path == "/version" and method == "GET":
            self._write_simple(conn, 200, {"version": "0.0.0-sim"}, close)
        elif path == "/sim/stats" and method == "GET":
            self._write_simple(conn, 200, self.stats.as_dict(), close)
        elif path == "/sim/reset" and method == "POST":
            self.stats.reset()
            self._write_simple(conn, 200, self.stats.as_dict(), close)
        elif path in ("/v1/models", "/metrics", "/version", "/sim/stats", "/sim/reset"):
            self._write_simple(conn, 405, {"detail": "Method Not Allowed"}, close)
        else:
            self._write_simple(conn, 404, {"detail": "Not Found"}, close)
        return req.keep_alive

    def _metrics_text(self) -> bytes:
        """Prometheus exposition with vLLM's gauge names and labels."""
        cap = self.config.max_num_seqs
        specs = (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", 0),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", 1),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", 2),
        )
        lines: list[str] = []
        for name, help_text, idx in specs:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            for model, (running, waiting) in self._model_gauges.items():
                value = float(running) if idx == 0 else float(waiting) if idx == 1 else running / cap
                label = model.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{name}{{engine="0",model_name="{label}"}} {value!r}')
        return ("\n".join(lines) + "\n").encode()

    # ------------------------------------------------------------------ generation

    def _parse_generation(self, req: _Request, chat: bool) -> _Gen:
        """Validate the body and headers; raises _ApiError with vLLM's status and message."""
        try:
            body = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise _ApiError(400, f"Invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "Request body must be a JSON object")

        model = body.get("model")
        if model is None:
            model = self.config.models[0]  # vLLM serves the only model when none is named
        elif not isinstance(model, str) or model not in self._model_gauges:
            raise _ApiError(404, f"The model `{model}` does not exist.")

        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _ApiError(400, "messages must be a non-empty list")
            texts: list[str] = []
            for msg in messages:
                content = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):  # multi-part content: count the text parts
                    texts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
            prompt_text = " ".join(texts)
            prompt_tokens = len(prompt_text.split())
        else:
            prompt = body.get("prompt")
            if prompt is None:
                raise _ApiError(400, "prompt is required")
            if isinstance(prompt, str):
                prompt_text = prompt
                prompt_tokens = len(prompt.split())
            elif isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
                prompt_text = ""
                prompt_tokens = len(prompt)  # already token ids
            elif isinstance(prompt, list):
                prompt_text = " ".join(p for p in prompt if isinstance(p, str))
                prompt_tokens = sum(len(p.split()) if isinstance(p, str) else len(p) for p in prompt
                                    if isinstance(p, (str, list)))
            else:
                raise _ApiError(400, "prompt must be a string or a list")

        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = 16
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _ApiError(400, "max_tokens must be an integer >= 1")
        n = min(max_tokens, self.config.max_tokens_cap)
        finish = "length"
        if body.get("stop") and "STOPNOW" in prompt_text and n >= 2:
            n, finish = 2, "stop"

        stream = bool(body.get("stream", False))
        opts = body.get("stream_options")
        include_usage = stream and isinstance(opts, dict) and bool(opts.get("include_usage"))

        h = req.headers
        fault = h.get("x-sim-fault") or self.config.fault
        if fault is not None and fault not in FAULTS:
            raise _ApiError(400, f"unknown x-sim-fault {fault!r}")
        try:
            ttft = float(h["x-sim-ttft"]) if "x-sim-ttft" in h else self.config.ttft
            itl = float(h["x-sim-itl"]) if "x-sim-itl" in h else self.config.itl
            pause = float(h["x-sim-pause"]) if "x-sim-pause" in h else self.config.pause
        except ValueError:
            raise _ApiError(400, "x-sim-ttft, x-sim-itl and x-sim-pause must be numbers") from None

        base = h.get("x-request-id")
        prefix = "chatcmpl-" if chat else "cmpl-"
        rid = prefix + (base if base else uuid.uuid4().hex)
        return _Gen(
            chat=chat, stream=stream, model=model, n=n, finish=finish, prompt_tokens=prompt_tokens,
            include_usage=include_usage, rid=rid, created=int(time.time()), ttft=max(ttft, 0.0),
            itl=max(itl, 0.0), fault=fault, pause=pause,
            extra=[("x-request-id", base)] if base else None,
        )

    async def _generation(self, conn: _Conn, req: _Request, chat: bool) -> bool:
        """Answer a completions/chat request and record exactly one outcome for it."""
        st = self.stats
        st.requests_total += 1
        st.active += 1
        outcome = "failed"
        keep = req.keep_alive
        extra = [("x-request-id", req.headers["x-request-id"])] if "x-request-id" in req.headers else None
        try:
            try:
                g = self._parse_generation(req, chat)
            except _ApiError as e:
                self._write_simple(conn, e.status, self._error_body(e.status, e.message), not keep, extra)
                return keep
            outcome = await self._run(conn, g, keep)
            if outcome == "failed_close":
                outcome, keep = "failed", False
        except _ClientGone:
            outcome, keep = "cancelled", False
        except asyncio.CancelledError:
            if not conn.gone:
                raise  # server shutdown, not a client disconnect
            conn.task.uncancel()
            outcome, keep = "cancelled", False
        except Exception as e:  # a simulator bug must show up as a 500, not as a silently dropped request
            keep = False
            try:
                self._write_simple(conn, 500, self._error_body(500, f"simulator error: {e!r}"), True, extra)
            except _ClientGone:
                pass
        finally:
            self._disarm(conn)
            st.active -= 1
            if outcome == "completed":
                st.completed += 1
            elif outcome == "cancelled":
                st.cancelled += 1
                st.last_cancel_at = time.time()
            else:
                st.failed += 1
        return keep

    async def _run(self, conn: _Conn, g: _Gen, keep: bool) -> str:
        """Apply whole-response faults, else generate; returns the outcome name."""
        fault = g.fault
        if fault == "refuse":
            conn.writer.transport.abort()
            conn.eof = True
            return "failed_close"
        if fault is not None and fault.startswith("status_"):
            status = int(fault[7:])
            self._write_simple(conn, status, self._error_body(status, f"simulated {fault}"), not keep, g.extra)
            return "failed"
        if fault == "not_json":
            self._write_simple(conn, 200, b"<html>oops</html>", not keep, g.extra,
                               content_type="text/html; charset=utf-8")
            return "failed"
        if fault == "hang_headers":
            self._arm(conn)
            await asyncio.get_running_loop().create_future()  # until the client leaves or shutdown
        if g.stream:
            return await self._stream(conn, g, keep)
        return await self._blocking(conn, g, keep)

    @asynccontextmanager
    async def _scheduled(self, conn: _Conn, g: _Gen) -> AsyncIterator[None]:
        """Count `g` as waiting until the scheduler admits it, then as running until the block ends."""
        st, gauges = self.stats, self._model_gauges[g.model]
        st.waiting += 1
        gauges[1] += 1
        try:
            await self._admit(conn, g)
        finally:
            st.waiting -= 1
            gauges[1] -= 1
        st.running += 1
        gauges[0] += 1
        try:
            yield
        finally:
            st.running -= 1
            gauges[0] -= 1
            assert self._sem is not None
            self._sem.release()

    async def _admit(self, conn: _Conn, g: _Gen) -> None:
        """Queue for a scheduler slot, then wait out ttft; both phases count as waiting."""
        assert self._sem is not None
        if self._sem.locked():
            self._arm(conn)
        await self._sem.acquire()
        if g.ttft > 0:
            self._arm(conn)
            try:
                await asyncio.sleep(g.ttft)
            except BaseException:
                self._sem.release()  # the caller only owns the slot once _admit returns
                raise

    def _usage(self, g: _Gen, completion: int) -> dict[str, Any]:
        """vLLM's usage object."""
        return {"prompt_tokens": g.prompt_tokens, "total_tokens": g.prompt_tokens + completion,
                "completion_tokens": completion, "prompt_tokens_details": None}

    def _huge(self) -> str:
        """20 MB of token text, built once."""
        if self._huge_text is None:
            self._huge_text = " tok" * (_HUGE_BYTES // 4)
        return self._huge_text

    async def _blocking(self, conn: _Conn, g: _Gen, keep: bool) -> str:
        """Non-streaming answer after ttft + itl*(n-1)."""
        st = self.stats
        loop = asyncio.get_running_loop()
        async with self._scheduled(conn, g):
            t_run = loop.time()
            try:
                if g.itl > 0 and g.n > 1:
                    self._arm(conn)
                    await asyncio.sleep(g.itl * (g.n - 1))
            except BaseException:
                # Cancelled mid-generation: credit the tokens a real engine would have made so far.
                made = g.n if g.itl <= 0 else 1 + int((loop.time() - t_run) / g.itl)
                st.tokens_generated += min(made, g.n)
                raise
            st.tokens_generated += g.n

        fault = g.fault
        if fault in ("huge", "huge_chunked"):
            text = self._huge()
            n, finish = len(text) // 4, "length"
        else:
            text = "".join([f" tok{i}" for i in range(1, g.n + 1)])
            n, finish = g.n, g.finish
        if g.chat:
            resp = {
                "id": g.rid, "object": "chat.completion", "created": g.created, "model": g.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None,
                                                     "content": text, "tool_calls": []},
                             "logprobs": None, "finish_reason": finish, "stop_reason": None}],
                "usage": self._usage(g, n), "prompt_logprobs": None,
            }
        else:
            resp = {
                "id": g.rid, "object": "text_completion", "created": g.created, "model": g.model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
                             "stop_reason": None, "prompt_logprobs": None}],
                "usage": self._usage(g, n),
            }

        if fault == "error_event":
            # Non-streaming equivalent of an in-band engine failure.
            self._write_simple(conn, 500, self._error_body(500, "simulated engine failure"), not keep, g.extra)
            return "failed"
        if fault in ("malformed_sse", "invalid_json_chunk"):
            self._write_simple(conn, 200, b"{not json", not keep, g.extra)
            return "failed"
        body = _dumps(resp)
        if fault in ("pause_mid_stream", "cut_mid_chunk"):
            # Headers and half the body, then stall or abort: the non-streaming analogue.
            head = self._head(200, "application/json", len(body), g.extra, not keep)
            await self._send(conn, head + body[: len(body) // 2])
            if fault == "cut_mid_chunk":
                conn.writer.transport.abort()
                conn.eof = True
                return "failed_close"
            await self._pause(conn, g)
            await self._send(conn, body[len(body) // 2:])
            return "completed"
        if fault == "huge_chunked":
            # The same answer without a Content-Length: its size is known only once it has all come.
            await self._send(conn, self._head(200, "application/json", None, g.extra, not keep))
            for start in range(0, len(body), 65536):
                await self._send_chunk(conn, body[start:start + 65536])
            await self._send(conn, b"0\r\n\r\n")
            return "completed"
        if conn.writer.transport.is_closing():
            raise _ClientGone()
        await self._send(conn, self._head(200, "application/json", len(body), g.extra, not keep) + body)
        return "completed"

    async def _pause(self, conn: _Conn, g: _Gen) -> None:
        """Stall for g.pause seconds, or until the client leaves when it is None."""
        self._arm(conn)
        if g.pause is None:
            await asyncio.get_running_loop().create_future()
        else:
            await asyncio.sleep(g.pause)

    async def _stream(self, conn: _Conn, g: _Gen, keep: bool) -> str:
        """SSE answer: one HTTP chunk per event, each drained as soon as it is produced."""
        st = self.stats
        loop = asyncio.get_running_loop()
        # Like Starlette's StreamingResponse, headers go out before the engine has produced anything.
        await self._send(conn, self._head(200, "text/event-stream; charset=utf-8", None, g.extra, not keep))
        self._arm(conn)

        # Pre-render the constant parts of each chunk; per-token json.dumps would dominate CPU at 100k events/s.
        head = (b'data: {"id":' + _dumps(g.rid) + b',"object":'
                + (b'"chat.completion.chunk"' if g.chat else b'"text_completion"')
                + b',"created":%d,"model":' % g.created + _dumps(g.model))
        if g.chat:
            tok_prefix = head + b',"choices":[{"index":0,"delta":{"content":'
            tok_suffix = b'},"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            last_suffix = b'},"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n' % g.finish.encode()
        else:
            tok_prefix = head + b',"choices":[{"index":0,"text":'
            tok_suffix = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            last_suffix = b',"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n' % g.finish.encode()

        fault = g.fault
        n = g.n
        if fault == "huge":
            n = 1
            last_suffix = last_suffix.replace(b'"stop"', b'"length"')
        fault_at = min(_FAULT_AFTER_TOKENS, n) if fault in _MID_STREAM_FAULTS else -1

        def token_event(i: int) -> bytes:
            """Render the SSE event for token i (1-based)."""
            text = (_dumps(self._huge()) if fault == "huge" else b'" tok%d"' % i)
            return tok_prefix + text + (last_suffix if i == n else tok_suffix)

        emitter: _Emitter | None = None
        async with self._scheduled(conn, g):
            try:
                if g.chat:
                    role = {"id": g.rid, "object": "chat.completion.chunk", "created": g.created, "model": g.model,
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]}
                    await self._send_chunk(conn, b"data: " + _dumps(role) + b"\n\n")
                assert self._ticker is not None
                emitter = _Emitter(loop, self._ticker, conn.writer.transport, token_event, st, g.itl)
                i = 1
                while i <= n:
                    last = fault_at if i <= fault_at else n
                    i = await emitter.run(i, last)
                    if emitter.must_drain:
                        try:
                            await conn.writer.drain()
                        except (ConnectionError, OSError):
                            raise _ClientGone() from None
                    if i == fault_at + 1 and i - 1 == last:
                        result = await self._mid_stream_fault(conn, g, i - 1, n, token_event)
                        if result is not None:
                            return result
                        emitter.restart_clock(i)  # after a pause, resume one itl later instead of bursting
                if g.include_usage:
                    usage = {"id": g.rid, "object": "chat.completion.chunk" if g.chat else "text_completion",
                             "created": g.created, "model": g.model, "choices": [],
                             "usage": self._usage(g, n)}
                    await self._send_chunk(conn, b"data: " + _dumps(usage) + b"\n\n")
                await self._send(conn, b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
                return "completed"
            finally:
                if emitter is not None:
                    emitter.cancel()

    async def _mid_stream_fault(
        self, conn: _Conn, g: _Gen, i: int, n: int, token_event: Callable[[int], bytes]
    ) -> str | None:
        """Inject a stream fault after token i; returns an outcome to stop, or None to carry on."""
        fault = g.fault
        if fault == "pause_mid_stream":
            await self._pause(conn, g)
        elif fault == "malformed_sse":
            await self._send_chunk(conn, b"garbage\n\n")
        elif fault == "invalid_json_chunk":
            await self._send_chunk(conn, b"data: {not json\n\n")
        elif fault == "error_event":
            err = self._error_body(500, "simulated engine failure")
            await self._send_chunk(conn, b"data: " + _dumps(err) + b"\n\n")
            await self._send(conn, b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            return "failed"
        elif fault == "cut_mid_chunk":
            payload = token_event(i + 1) if i < n else b"data: [DONE]\n\n"
            framed = b"%x\r\n%s\r\n" % (len(payload), payload)
            await self._send(conn, framed[: len(framed) // 2])
            conn.writer.transport.abort()
            conn.eof = True
            return "failed_close"
        return None


class SimulatorThread:
    """A SimServer running on its own event loop in a daemon thread, for in-process tests."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        cfg = config or SimConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.config = cfg
        self._server = SimServer(cfg)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def stats(self) -> SimStats:
        """The live counters (plain ints; read them from any thread)."""
        return self._server.stats

    @property
    def url(self) -> str:
        """Base URL such as http://127.0.0.1:43123."""
        return self._server.url

    @property
    def port(self) -> int:
        """The bound port (resolved after start when the config asked for 0)."""
        return self._server.port

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        """Start the server thread and return once it is accepting connections."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            """Thread body: own loop, serve until stop()."""
            loop = self.config.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                """Start, signal readiness, then wait for stop."""
                self._stop = asyncio.Event()
                try:
                    await self._server.start()
                except BaseException as e:  # surface bind errors to start()
                    error.append(e)
                    ready.set()
                    return
                ready.set()
                await self._stop.wait()
                await self._server.close()

            try:
                loop.run_until_complete(main())
            finally:
                _close_loop(loop)

        self._thread = threading.Thread(target=run, name="vllm-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("simulator did not start")
        if error:
            self._thread.join()
            self._thread = None
            raise error[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close all connections and stop the thread."""
        if self._thread is None:
            return
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ev.set)
        self._thread.join(timeout)
        self._thread = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the simulator loop and wait, so counter updates never race with it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._as_coro(fn), self._loop).result(5)

    @staticmethod
    async def _as_coro(fn: Callable[[], Any]) -> Any:
        """Adapt a plain callable for run_coroutine_threadsafe."""
        return fn()

    def reset(self) -> None:
        """Zero the cumulative counters (same as POST /sim/reset)."""
        self._call(self._server.stats.reset)

    def snapshot(self) -> dict[str, float]:
        """A consistent copy of the counters."""
        return self._call(self._server.stats.as_dict)

    def wait_for(self, predicate: Callable[[SimStats], bool], timeout: float = 5.0, interval: float = 0.005) -> bool:
        """Poll predicate(stats) until true or timeout; returns the last result."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.stats):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def __enter__(self) -> SimulatorThread:
        """Start on entry."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop on exit."""
        self.stop()


# ---------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> SimConfig:
    """Map CLI flags onto SimConfig."""
    p = argparse.ArgumentParser(prog="python -m bench.simulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    p.add_argument("--model", default="sim-model", help="served model name")
    p.add_argument("--models", default=None, help="comma-separated model names (overrides --model)")
    p.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    p.add_argument("--itl", type=float, default=0.0, help="seconds between tokens")
    p.add_argument("--max-tokens-cap", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=256, help="concurrent generating requests")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--fault", choices=FAULTS, default=None, help="inject this fault into every generation")
    p.add_argument("--pause", type=float, default=None, help="pause_mid_stream seconds (default: forever)")
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="event loop; auto uses uvloop when it is importable")
    p.add_argument("--runner", choices=simulator_routes.RUNNERS, default="generate",
                   help="generate: chat, completions, responses; pooling: embeddings, score, rerank")
    a = p.parse_args(argv)
    models = a.models if a.models else a.model
    return SimConfig(host=a.host, port=a.port, models=models, ttft=a.ttft, itl=a.itl,
                     max_tokens_cap=a.max_tokens_cap, max_num_seqs=a.max_num_seqs,
                     max_model_len=a.max_model_len, fault=a.fault, pause=a.pause, backlog=a.backlog,
                     loop=a.loop, runner=a.runner)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Finish leftover tasks (cancelled watchers) before closing, so nothing is destroyed while pending."""
    try:
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        loop.close()


def raise_fd_limit() -> None:
    """Lift the soft open-file limit to the hard one; thousands of streams need thousands of fds."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


async def _serve(config: SimConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    import signal

    server = SimServer(config)
    await server.start()
    print(f"simulator listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    config = _parse_args(argv)
    raise_fd_limit()
    loop = config.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(config))
    except KeyboardInterrupt:
        pass
    finally:
        _close_loop(loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
