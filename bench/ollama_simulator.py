"""A small Ollama-shaped server (standard library only), for tests of Sluice's Ollama upstream.

It speaks Ollama's native wire format: /api/generate and /api/chat answer NDJSON lines
(chunked, one line per token, `--itl` seconds apart) or one JSON object with
"stream": false; /api/tags, /api/version, and errors as {"error": "..."}. Tokens are
" tok1", " tok2"...; usage counts prompt words as prompt_eval_count. /sim/stats counts
requests, and cancellations seen as a failed write to a client that left.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_NUM_PREDICT = 16


class Stats:
    """Counters shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "completed": 0, "cancelled": 0, "running": 0}

    def add(self, name: str, delta: int = 1) -> None:
        with self.lock:
            self.counts[name] += delta

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _prompt_words(path: str, body: dict[str, Any]) -> int:
    if path == "/api/generate":
        return len(str(body.get("prompt", "")).split())
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


class Handler(BaseHTTPRequestHandler):
    """One request; the server carries its settings (models, itl) and the stats."""

    protocol_version = "HTTP/1.1"
    server: OllamaServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read /sim/stats instead
        pass

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._json(200, {"version": "0.0.0-sim"})
        elif self.path == "/api/tags":
            self._json(200, {"models": [
                {"name": m, "model": m, "modified_at": _now(), "size": 1, "digest": "0" * 64,
                 "details": {"format": "gguf", "family": "sim", "parameter_size": "1M",
                             "quantization_level": "Q4_0"}} for m in self.server.models]})
        elif self.path == "/sim/stats":
            self._json(200, self.server.stats.snapshot())
        else:
            self._json(404, {"error": "404 page not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path not in ("/api/generate", "/api/chat"):
            self._json(404, {"error": "404 page not found"})
            return
        if body.get("model") not in self.server.models:
            self._json(404, {"error": f"model \"{body.get('model')}\" not found, try pulling it first"})
            return
        self.server.stats.add("requests")
        self.server.stats.add("running")
        try:
            self._generate(self.path == "/api/chat", body)
        finally:
            self.server.stats.add("running", -1)

    def _generate(self, chat: bool, body: dict[str, Any]) -> None:
        limit = int((body.get("options") or {}).get("num_predict") or DEFAULT_NUM_PREDICT)
        tokens = [f" tok{i}" for i in range(1, limit + 1)]
        model = body["model"]
        final = {"model": model, "created_at": _now(), "done": True, "done_reason": "length",
                 "total_duration": 1000, "load_duration": 10, "prompt_eval_count": _prompt_words(self.path, body),
                 "prompt_eval_duration": 100, "eval_count": len(tokens), "eval_duration": 900}

        def piece(text: str) -> dict[str, Any]:
            if chat:
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        if body.get("stream") is False:
            time.sleep(self.server.itl * len(tokens))
            self._json(200, {**final, **piece("".join(tokens))})
            self.server.stats.add("completed")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = [{"model": model, "created_at": _now(), **piece(t), "done": False} for t in tokens]
        lines.append({**final, **piece("")})
        try:
            for i, line in enumerate(lines):
                if i:
                    time.sleep(self.server.itl)
                data = json.dumps(line).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.server.stats.add("cancelled")
            self.close_connection = True
            return
        self.server.stats.add("completed")


class OllamaServer(ThreadingHTTPServer):
    """The server: its models, time between tokens, and counters."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], models: list[str], itl: float) -> None:
        super().__init__(address, Handler)
        self.models, self.itl, self.stats = models, itl, Stats()


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m bench.ollama_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11435)
    parser.add_argument("--models", default="sim-llama:latest", help="comma-separated model names")
    parser.add_argument("--itl", type=float, default=0.0, help="seconds between streamed tokens")
    args = parser.parse_args(argv)
    server = OllamaServer((args.host, args.port), args.models.split(","), args.itl)
    print(f"ollama simulator listening on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
