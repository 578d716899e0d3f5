"""What the e2e tests use to look at the engine and to be a client that leaves on purpose."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

# The engine the e2e tests share runs at most two sequences, so that a third request really
# waits in vLLM's queue (test_cancel.py).
MAX_NUM_SEQS = 2
# SmolLM2 runs on past 400 tokens from this prompt at temperature 0: no early end of text.
LONG_PROMPT = "Once upon a time"

_METRIC = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\}\s+(\S+)$", re.M)


def engine_load(engine_url: str) -> dict[str, float]:
    """vLLM's own count of requests running and waiting, from its /metrics."""
    load = {"running": 0.0, "waiting": 0.0}
    for kind, value in _METRIC.findall(requests.get(engine_url + "/metrics", timeout=5).text):
        load[kind] += float(value)
    return load


def in_flight(load: dict[str, float]) -> float:
    """Requests the engine holds: running plus waiting."""
    return load["running"] + load["waiting"]


def wait_for_load(engine_url: str, predicate: Callable[[dict[str, float]], bool],
                  timeout: float) -> tuple[bool, dict[str, float], float]:
    """Poll the engine's load until predicate(load) holds: (held, last load, seconds waited)."""
    started = time.monotonic()
    while True:
        load = engine_load(engine_url)
        waited = time.monotonic() - started
        if predicate(load) or waited > timeout:
            return predicate(load), load, waited
        time.sleep(0.05)


class RawStream:
    """A streaming POST on a plain socket, so that the test decides exactly when the client goes away."""

    def __init__(self, base_url: str, path: str, body: dict[str, Any]) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        self.sock.sendall(head.encode() + payload)
        self.received = b""
        self._reader: threading.Thread | None = None

    def read_events(self, count: int) -> int:
        """Read until count `data:` events have arrived (or the stream ends); the number seen."""
        while self.received.count(b"data: ") < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        return self.received.count(b"data: ")

    def drain(self) -> None:
        """Keep reading in the background, as a live client would, until close()."""
        def read() -> None:
            try:
                while self.sock.recv(65536):
                    pass
            except OSError:
                pass

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Go away: the client's end of the connection closes."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._reader is not None:
            self._reader.join(5)
