"""SIGTERM to the gunicorn master during 50 streams: each one completes within the grace period
or ends with an error event then [DONE]; none is cut silently, and no generation is left
running upstream."""
from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.processes import Gateway, Simulator, wait_until
from bench.sse_client import StreamResult, stream

GRACEFUL = 6  # seconds; the gateway ends what still runs 2 s before gunicorn's kill
STREAMS = 50
SHORT, LONG = 20, 2000  # tokens at 50 ms each: 1 s (finishes in time) and 100 s (cannot)


def test_sigterm_during_50_streams_cuts_none_silently(tmp_logs):
    sim = Simulator("--itl", "0.05", log=tmp_logs / "shutdown-simulator.log")
    gw = Gateway({"SLUICE_UPSTREAM_URL": sim.url, "SLUICE_MODEL": "sim-model",
                  "SLUICE_GRACEFUL_TIMEOUT": str(GRACEFUL)}, log=tmp_logs / "shutdown-gateway.log")
    try:
        lengths = [SHORT if i % 2 else LONG for i in range(STREAMS)]

        def one_stream(max_tokens: int) -> StreamResult:
            return stream(gw.url + "/v1/generate/stream", {"prompt": "go", "max_tokens": max_tokens}, timeout=60)

        def one_blocking() -> requests.Response:
            return requests.post(gw.url + "/v1/generate", json={"prompt": "go", "max_tokens": LONG}, timeout=60)

        with ThreadPoolExecutor(STREAMS + 4) as pool:
            streams = [pool.submit(one_stream, n) for n in lengths]
            blocking = [pool.submit(one_blocking) for _ in range(4)]
            wait_until(lambda: sim.stats()["running"] == STREAMS + 4, 20, "every generation running upstream")
            gw.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            results = [f.result() for f in streams]
            replies = [f.result() for f in blocking]

        for max_tokens, result in zip(lengths, results, strict=True):
            assert result.status == 200 and result.done, f"a stream was cut without [DONE]: {result.events[-2:]}"
            last = result.events[-2]
            if max_tokens == SHORT:
                assert last["usage"]["completion_tokens"] == SHORT, "a stream that fits the grace period completes"
            else:
                assert last["error"]["code"] == "shutting_down"
        for reply in replies:
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "shutting_down"
            assert reply.headers["Retry-After"] == "1"
        gw.proc.wait(GRACEFUL + 10)
        assert time.monotonic() - signalled < GRACEFUL + 10
        wait_until(lambda: sim.stats()["running"] + sim.stats()["waiting"] == 0, 5, "no generation left upstream")
        log = gw.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "Worker graceful timeout" not in log
    finally:
        gw.stop()
        sim.stop()
