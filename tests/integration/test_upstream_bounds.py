"""What the gateway reads from an upstream is bounded: a blocking answer by
SLUICE_MAX_UPSTREAM_BODY_BYTES, one stream event by SLUICE_MAX_SSE_EVENT_BYTES. The simulator's
`huge` fault answers 20 MB (a blocking body, or one stream event); the gateway here takes 1 MiB."""
from __future__ import annotations

import pytest
import requests

from bench.processes import Gateway, Simulator
from bench.sse_client import stream

MiB = 1024 * 1024
BODY = {"prompt": "one two three", "max_tokens": 5}


@pytest.fixture(scope="module")
def gateway(tmp_logs):
    sim = Simulator("--fault", "huge", log=tmp_logs / "huge-simulator.log")
    gw = Gateway({"SLUICE_UPSTREAM_URL": sim.url, "SLUICE_MODEL": "sim-model", "SLUICE_WORKERS": "2",
                  "SLUICE_MAX_UPSTREAM_BODY_BYTES": str(MiB), "SLUICE_MAX_SSE_EVENT_BYTES": str(MiB)},
                 log=tmp_logs / "bounds-gateway.log")
    yield gw
    gw.stop()
    sim.stop()


def test_a_blocking_answer_over_the_bound_is_a_502(gateway):
    reply = requests.post(gateway.url + "/v1/generate", json=BODY, timeout=30)
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["code"] == "upstream_body_too_large" and "MAX_UPSTREAM_BODY_BYTES" in error["message"]


def test_a_stream_event_over_the_bound_ends_the_stream_with_an_error_event_then_done(gateway):
    result = stream(gateway.url + "/v1/generate/stream", BODY, timeout=30)
    assert result.status == 200 and result.done
    error = result.events[-2]["error"]
    assert error["code"] == "upstream_event_too_large" and "MAX_SSE_EVENT_BYTES" in error["message"]
    # The gateway still serves after dropping the upstream.
    assert requests.get(gateway.url + "/healthz", timeout=10).ok
