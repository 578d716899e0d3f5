"""The gateway under real gunicorn gevent workers, in front of the simulator."""
from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench.processes import Gateway, Simulator, wait_until
from bench.sse_client import stream


def test_blocking_generation(gateway):
    reply = requests.post(gateway.url + "/v1/generate", json={"prompt": "one two three", "max_tokens": 16},
                          headers={"X-Request-ID": "req-42"}, timeout=30)
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"id", "model", "text", "finish_reason", "usage"}
    assert "req-42" in body["id"], "the request id is forwarded to the upstream"
    assert reply.headers["X-Request-ID"] == "req-42"
    assert body["model"] == "sim-model" and body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
    assert len(body["text"].split()) == 16


def test_readyz_and_healthz(gateway):
    assert requests.get(gateway.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(gateway.url + "/readyz", timeout=5).json()["status"] == "ready"


def test_stream_chunks_arrive_spread_over_time(gateway):
    result = stream(gateway.url + "/v1/generate/stream", {"prompt": "go", "max_tokens": 25})
    assert result.status == 200 and result.done
    texts = [t for e, t in zip(result.events, result.times, strict=True) if isinstance(e, dict) and e.get("text")]
    assert len(texts) == 25
    # 25 tokens 20 ms apart: relayed one by one, the first arrives ~0.5 s before the last.
    assert texts[-1] - texts[0] > 0.3
    assert len({round(t, 3) for t in texts}) > 15, "tokens arrived in bursts, not one by one"
    assert result.events[-2]["usage"]["completion_tokens"] == 25


def test_200_concurrent_streams_through_one_worker(gateway):
    def one(i: int):
        return stream(gateway.url + "/v1/generate/stream", {"prompt": f"stream {i}", "max_tokens": 20}, timeout=120)

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    assert [r.status for r in results] == [200] * 200
    assert all(r.done and len(r.text_events) == 20 for r in results)
    assert all(r.events[-2]["usage"]["completion_tokens"] == 20 for r in results)


def open_raw(url: str, path: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket (so the test can vanish mid-response like a real client)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def wait_cancelled(sim: Simulator, before: int) -> None:
    wait_until(lambda: sim.stats()["cancelled"] > before, 2.0, "upstream cancellation")
    wait_until(lambda: sim.stats()["running"] + sim.stats()["waiting"] == 0, 2.0, "upstream idle")


def test_client_leaving_mid_stream_cancels_upstream(gateway, simulator):
    before = simulator.stats()["cancelled"]
    sock = open_raw(gateway.url, "/v1/generate/stream", {"prompt": "long", "max_tokens": 2000})
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(4096)
    sock.close()
    wait_cancelled(simulator, before)


@pytest.fixture(scope="module")
def slow_start(tmp_logs):
    """An upstream that takes 30 s to the first token: a request queued behind others."""
    sim = Simulator("--ttft", "30", log=tmp_logs / "slow-simulator.log")
    gw = Gateway({"SLUICE_UPSTREAM_URL": sim.url}, log=tmp_logs / "slow-gateway.log")
    yield gw, sim
    gw.stop()
    sim.stop()


@pytest.mark.parametrize("path", ["/v1/generate/stream", "/v1/generate"])
def test_client_leaving_before_first_token_cancels_upstream(slow_start, path):
    gw, sim = slow_start
    before = sim.stats()["cancelled"]
    sock = open_raw(gw.url, path, {"prompt": "queued", "max_tokens": 50})
    wait_until(lambda: sim.stats()["waiting"] + sim.stats()["running"] == 1, 5, "request upstream")
    sock.close()
    wait_cancelled(sim, before)
    # The worker is still healthy afterwards.
    assert requests.get(gw.url + "/healthz", timeout=5).ok


def post_json(url: str, body: dict) -> tuple[int, dict]:
    """POST and return status and JSON body, dropping the response at once: a live requests
    Response keeps its keep-alive connection open, and gunicorn's graceful stop waits for it."""
    reply = requests.post(url, json=body, timeout=10)
    return reply.status_code, reply.json()


def test_upstream_gone_is_502_then_recovers(tmp_logs):
    sim = Simulator(log=tmp_logs / "gone-simulator.log")
    gw = Gateway({"SLUICE_UPSTREAM_URL": sim.url}, log=tmp_logs / "gone-gateway.log")
    try:
        assert requests.post(gw.url + "/v1/generate", json={"prompt": "x", "max_tokens": 2}, timeout=10).ok
        sim.stop()
        status, body = post_json(gw.url + "/v1/generate", {"prompt": "x", "max_tokens": 2})
        assert status == 502 and body["error"]["code"] == "upstream_unreachable"
        assert requests.get(gw.url + "/readyz", timeout=10).status_code == 503
    finally:
        gw.stop()
        sim.stop()
