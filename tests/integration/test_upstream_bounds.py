"""What the gateway reads from an upstream is bounded: a blocking answer by
SLUICE_MAX_UPSTREAM_BODY_BYTES, one stream event by SLUICE_MAX_SSE_EVENT_BYTES. The simulator's
`huge` fault answers 20 MB (a blocking body, or one stream event), `huge_chunked` the same blocking
body without a Content-Length; the gateway here takes 1 MiB."""
from __future__ import annotations

import pytest
import requests

from bench.processes import Gateway, Simulator
from bench.sse_client import stream

MiB = 1024 * 1024
BODY = {"prompt": "one two three", "max_tokens": 5}


def bounded_gateway(tmp_logs, fault: str):
    sim = Simulator("--fault", fault, log=tmp_logs / f"{fault}-simulator.log")
    gw = Gateway({"SLUICE_UPSTREAM_URL": sim.url, "SLUICE_MODEL": "sim-model", "SLUICE_WORKERS": "2",
                  "SLUICE_MAX_UPSTREAM_BODY_BYTES": str(MiB), "SLUICE_MAX_SSE_EVENT_BYTES": str(MiB)},
                 log=tmp_logs / f"bounds-{fault}-gateway.log")
    return sim, gw


@pytest.fixture(scope="module", params=["huge", "huge_chunked"])
def any_huge(request, tmp_logs):
    sim, gw = bounded_gateway(tmp_logs, request.param)
    yield gw
    gw.stop()
    sim.stop()


@pytest.fixture(scope="module")
def gateway(tmp_logs):
    sim, gw = bounded_gateway(tmp_logs, "huge")
    yield gw
    gw.stop()
    sim.stop()


def test_a_blocking_answer_over_the_bound_is_a_502_with_or_without_its_length(any_huge):
    reply = requests.post(any_huge.url + "/v1/generate", json=BODY, timeout=30)
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["code"] == "upstream_body_too_large" and "MAX_UPSTREAM_BODY_BYTES" in error["message"]
    # The gateway stays whole: the answer was dropped, not held.
    assert requests.get(any_huge.url + "/healthz", timeout=10).ok


def test_a_stream_event_over_the_bound_ends_the_stream_with_an_error_event_then_done(gateway):
    result = stream(gateway.url + "/v1/generate/stream", BODY, timeout=30)
    assert result.status == 200 and result.done
    error = result.events[-2]["error"]
    assert error["code"] == "upstream_event_too_large" and "MAX_SSE_EVENT_BYTES" in error["message"]
    # The gateway still serves after dropping the upstream.
    assert requests.get(gateway.url + "/healthz", timeout=10).ok
