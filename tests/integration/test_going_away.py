"""HUP and TERM with idle connections open: the old workers let go of them at once (a WebSocket gets
its 1001 close frame, a kept-alive HTTP connection is closed) and exit within seconds, while a
generation in flight still finishes. The grace period is a minute, so any wait for it shows."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests
import websocket

from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway, wait_until
from bench.sse_client import StreamResult, stream
from bench.worker_probe import children

GRACEFUL = 60  # seconds: far longer than any wait the tests allow
PROMPT = {"prompt": "go", "max_tokens": 100}  # 2 s of tokens at 20 ms each


@pytest.fixture
def gateway(simulator, redis_server, tmp_logs):
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_MODEL": "sim-model", "SLUICE_WORKERS": "2",
                  "SLUICE_REDIS_URL": redis_server.url, "SLUICE_DEFAULT_RPM": "1000",
                  "SLUICE_KEYS_FILE": str(tmp_logs / "going-away-keys.json"),
                  "SLUICE_GRACEFUL_TIMEOUT": str(GRACEFUL)}, log=tmp_logs / "going-away-gateway.log")
    wait_until(lambda: len(children(gw.proc.pid)) == 2, 15, "two workers")
    yield gw
    gw.stop()


@pytest.fixture
def key(tmp_logs, gateway) -> str:
    made, _ = KeyRing(FileKeyStore(tmp_logs / "going-away-keys.json"), None).create(f"k{time.monotonic_ns()}")
    return made


def idle_socket(gw: Gateway, key: str) -> websocket.WebSocket:
    """A WebSocket that has run one generation and now waits for the next."""
    ws = websocket.create_connection(gw.url.replace("http://", "ws://") + "/v1/generate/ws",
                                     header=[f"Authorization: Bearer {key}"], timeout=20)
    ws.send(json.dumps({"prompt": "hi", "max_tokens": 2}))
    while json.loads(ws.recv())["type"] != "done":
        pass
    return ws


def close_code(ws: websocket.WebSocket) -> int:
    """The code of the server's close frame (20 s at most: far less than the grace period)."""
    while (frame := ws.recv_frame()).opcode != websocket.ABNF.OPCODE_CLOSE:
        pass
    ws.shutdown()
    return int.from_bytes(frame.data[:2], "big")


def stream_in_background(gw: Gateway, key: str) -> tuple[threading.Thread, list[StreamResult]]:
    results: list[StreamResult] = []
    thread = threading.Thread(target=lambda: results.append(
        stream(gw.url + "/v1/generate/stream", PROMPT, headers={"Authorization": f"Bearer {key}"}, timeout=30)))
    thread.start()
    return thread, results


def test_hup_closes_idle_connections_and_the_old_workers_exit_soon(gateway, key, simulator):
    old_workers = set(children(gateway.proc.pid))
    sockets = [idle_socket(gateway, key) for _ in range(3)]
    kept_alive = requests.Session()
    assert kept_alive.get(gateway.url + "/healthz", timeout=10).ok  # and now idle, kept alive
    running = simulator.stats()["running"]
    thread, results = stream_in_background(gateway, key)
    wait_until(lambda: simulator.stats()["running"] > running, 10, "the stream generating")

    os.kill(gateway.proc.pid, signal.SIGHUP)
    signalled = time.monotonic()
    assert [close_code(ws) for ws in sockets] == [1001] * 3
    thread.join(30)
    assert results[0].status == 200 and results[0].done and len(results[0].text_events) == 100
    wait_until(lambda: not old_workers & set(children(gateway.proc.pid)), 20, "the old workers gone")
    assert time.monotonic() - signalled < GRACEFUL / 2  # not the grace period: nothing idle held them
    kept_alive.close()
    # The new workers serve, WebSockets included.
    assert idle_socket(gateway, key).connected


def test_term_with_an_idle_websocket_stops_within_seconds(gateway, key):
    ws = idle_socket(gateway, key)
    gateway.proc.send_signal(signal.SIGTERM)
    assert close_code(ws) == 1001
    assert gateway.proc.wait(timeout=20) == 0, gateway.log_tail()
