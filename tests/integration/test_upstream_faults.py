"""Every fault bench/simulator.py injects, through real gunicorn: what the client sees, and that
the worker holds no more sockets, file descriptors or greenlets afterwards than before.

One gateway (one gevent worker, read timeout 1 s) serves the whole module; its upstream
port is served in turn by a simulator started with `--fault F` (the gateway does not
forward x-sim-* headers, so the fault is the simulator's, not the request's).
"""
from __future__ import annotations

import pytest
import requests

from bench.processes import Gateway, Simulator, free_port
from bench.sse_client import StreamResult, stream
from bench.worker_probe import settled_holdings, worker_pid

NOTHING_LISTENING = "nothing_listening"  # no simulator at all: the connection is refused
BODY = {"prompt": "one two three", "max_tokens": 5}

# fault -> (status, error code) of a blocking request
BLOCKING = {
    NOTHING_LISTENING: (502, "upstream_unreachable"),
    "refuse": (502, "upstream_connection_error"),
    "hang_headers": (504, "upstream_timeout"),
    "pause_mid_stream": (504, "upstream_timeout"),
    "malformed_sse": (502, "upstream_bad_body"),
    "invalid_json_chunk": (502, "upstream_bad_body"),
    "error_event": (502, "upstream_500"),
    "cut_mid_chunk": (502, "upstream_truncated"),
    "status_400": (400, "upstream_400"),
    "status_429": (503, "upstream_overloaded"),
    "status_500": (502, "upstream_500"),
    "status_503": (503, "upstream_overloaded"),
    "not_json": (502, "upstream_not_api"),
    "huge": (200, None),
    "huge_chunked": (200, None),
}
# fault -> (status, error code) of a stream; 200 with a code: tokens, then that error event, then [DONE]
STREAM = {
    **{fault: BLOCKING[fault] for fault in (NOTHING_LISTENING, "refuse", "hang_headers", "status_400",
                                            "status_429", "status_500", "status_503", "not_json")},
    "pause_mid_stream": (200, "upstream_timeout"),
    "malformed_sse": (200, None),  # a line that is no SSE field is ignored, as the SSE standard says
    "invalid_json_chunk": (200, "upstream_bad_event"),
    "error_event": (200, "upstream_stream_error"),
    "cut_mid_chunk": (200, "upstream_truncated"),
    "huge": (200, None),
    "huge_chunked": (200, None),
}
FAULTS = list(BLOCKING)
assert set(STREAM) == set(FAULTS)

ROUND = 1  # requests of each kind per round of the resource check: a leak of one per request shows as +2


@pytest.fixture(scope="module")
def gateway(tmp_logs, tmp_path_factory):
    """One worker with a greenlet probe, in front of a port the module's simulators take in turn."""
    port = free_port()
    # Health checks only at the first request: a background probe's kept-alive connection (or
    # one in flight) would blur the count of sockets the requests themselves leave behind.
    gw = Gateway({"SLUICE_UPSTREAM_URL": f"http://127.0.0.1:{port}", "SLUICE_MODEL": "sim-model",
                  "SLUICE_UPSTREAM_READ_TIMEOUT": "1", "SLUICE_HEALTH_INTERVAL": "3600"},
                 log=tmp_logs / "faults-gateway.log", probe_dir=tmp_path_factory.mktemp("probe"))
    gw.upstream_port = port
    gw.worker = worker_pid(gw.proc.pid)
    yield gw
    gw.stop()


@pytest.fixture(scope="module", params=FAULTS)
def fault(request, gateway, tmp_logs):
    """The fault under test, served by a simulator on the gateway's upstream port (none: refused)."""
    name = request.param
    sim = None
    if name != NOTHING_LISTENING:
        sim = Simulator("--fault", name, "--itl", "0.002", port=gateway.upstream_port,
                        log=tmp_logs / f"faults-simulator-{name}.log")
    yield name
    if sim is not None:
        sim.stop()


def blocking(gateway) -> requests.Response:
    return requests.post(gateway.url + "/v1/generate", json=BODY, timeout=30)


def streaming(gateway) -> StreamResult:
    return stream(gateway.url + "/v1/generate/stream", BODY, timeout=30)


def assert_blocking(reply: requests.Response, fault: str) -> None:
    status, code = BLOCKING[fault]
    assert reply.status_code == status, reply.text[:300]
    if code is None:
        assert reply.json()["text"]
        return
    error = reply.json()["error"]
    assert error["code"] == code and error["message"]
    if status == 503:
        assert reply.headers["Retry-After"] == "1"


def assert_stream(result: StreamResult, fault: str) -> None:
    status, code = STREAM[fault]
    assert result.status == status, result.events
    if status != 200:
        assert result.events[0]["error"]["code"] == code
        return
    assert result.done, "a stream never just stops: it ends with [DONE]"
    *events, _ = result.events
    errors = [e for e in events if "error" in e]
    if code is None:
        assert not errors and events[-1]["usage"]["completion_tokens"] >= 1
    else:
        assert errors == [events[-1]], "the error is the last event before [DONE]"
        assert events[-1]["error"]["code"] == code
        assert result.text_events, "the tokens before the fault were relayed"


def test_blocking_request_gets_the_documented_status(gateway, fault):
    assert_blocking(blocking(gateway), fault)


def test_stream_gets_the_documented_status_or_error_event_then_done(gateway, fault):
    assert_stream(streaming(gateway), fault)


def run_round(gateway, fault: str) -> None:
    """ROUND blocking requests and ROUND streams, each checked. One after the other, so that the
    upstream pool keeps at most one connection alive and anything more is a leak."""
    for _ in range(ROUND):
        assert_blocking(blocking(gateway), fault)
        assert_stream(streaming(gateway), fault)


def test_worker_holds_no_more_sockets_fds_or_greenlets_afterwards(gateway, fault):
    # The first round brings the upstream pool to its steady state for this fault (a kept-alive
    # connection is an fd by design); the second must leave nothing more behind.
    run_round(gateway, fault)
    before = settled_holdings(gateway.worker, gateway.probe_dir)
    run_round(gateway, fault)
    after = settled_holdings(gateway.worker, gateway.probe_dir)
    assert after.within(before), f"after {fault}: {after}, before: {before}"


def test_fault_leaves_no_traceback_in_the_log(gateway, fault):
    log = gateway.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log
