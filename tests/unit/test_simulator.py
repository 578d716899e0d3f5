"""Tests for bench.simulator, the vLLM stand-in upstream."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bench.simulator import FAULTS, SimConfig, SimulatorThread

TIMEOUT = 5


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    """One shared simulator for shape tests that do not look at counters."""
    s = SimulatorThread(SimConfig(port=0, models=("sim-model", "other-model"))).start()
    yield s
    s.stop()


@pytest.fixture()
def fresh() -> Iterator[SimulatorThread]:
    """A private simulator so counter assertions are not disturbed by other tests."""
    s = SimulatorThread(port=0).start()
    yield s
    s.stop()


def _post(sim: SimulatorThread, path: str, body: dict[str, Any], **kw: Any) -> requests.Response:
    """POST JSON to the simulator."""
    return requests.post(sim.url + path, json=body, timeout=TIMEOUT, **kw)


def _events(resp: requests.Response) -> list[str]:
    """The data payloads of an SSE response, in order."""
    return [line[6:] for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def _raw(sim: SimulatorThread, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> socket.socket:
    """Send a request on a raw socket, so the test controls exactly when the connection closes."""
    s = socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT)
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n")
    s.sendall(head.encode() + data)
    return s


def _recv_until(s: socket.socket, needle: bytes) -> bytes:
    """Read from a raw socket until needle has been seen."""
    buf = b""
    while needle not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {needle!r}; got {buf[-200:]!r}")
        buf += chunk
    return buf


# ---------------------------------------------------------------------- shapes


def test_health_and_models(sim: SimulatorThread) -> None:
    r = requests.get(sim.url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == b""
    models = requests.get(sim.url + "/v1/models", timeout=TIMEOUT).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["sim-model", "other-model"]
    m = models["data"][0]
    assert m == {"id": "sim-model", "object": "model", "created": m["created"], "owned_by": "vllm",
                 "root": "sim-model", "parent": None, "max_model_len": 2048, "permission": []}


def test_blocking_completion_shape(sim: SimulatorThread) -> None:
    r = _post(sim, "/v1/completions", {"model": "sim-model", "prompt": "one two three", "max_tokens": 5})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "sim-model" and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "text": " tok1 tok2 tok3 tok4 tok5", "logprobs": None,
                                "finish_reason": "length", "stop_reason": None, "prompt_logprobs": None}]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 8, "completion_tokens": 5,
                             "prompt_tokens_details": None}


def test_default_max_tokens_and_cap() -> None:
    with SimulatorThread(port=0, max_tokens_cap=4) as s:
        assert _post(s, "/v1/completions", {"prompt": "x"}).json()["usage"]["completion_tokens"] == 4
        assert _post(s, "/v1/completions", {"prompt": "x", "max_tokens": 3}).json()["usage"]["completion_tokens"] == 3
    with SimulatorThread(port=0) as s:
        assert _post(s, "/v1/completions", {"prompt": "x"}).json()["usage"]["completion_tokens"] == 16
        r = _post(s, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}],
                                              "max_completion_tokens": 2})
        assert r.json()["usage"]["completion_tokens"] == 2


def test_chat_shape(sim: SimulatorThread) -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    body = _post(sim, "/v1/chat/completions", {"model": "other-model", "messages": msgs, "max_tokens": 3}).json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "other-model"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": " tok1 tok2 tok3", "tool_calls": [],
                                 "reasoning_content": None}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 4 and body["usage"]["completion_tokens"] == 3


def test_stop_finish_reason(sim: SimulatorThread) -> None:
    body = _post(sim, "/v1/completions", {"prompt": "please STOPNOW", "stop": ["\n"], "max_tokens": 10}).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2
    # Without "stop" in the request the magic word does nothing.
    body = _post(sim, "/v1/completions", {"prompt": "please STOPNOW", "max_tokens": 10}).json()
    assert body["choices"][0]["finish_reason"] == "length"


def test_stream_chunks_and_done(sim: SimulatorThread) -> None:
    r = _post(sim, "/v1/completions", {"prompt": "a b", "max_tokens": 7, "stream": True}, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 7
    assert [c["choices"][0]["text"] for c in chunks] == [f" tok{i}" for i in range(1, 8)]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]
    assert chunks[0]["choices"][0] == {"index": 0, "text": " tok1", "logprobs": None,
                                       "finish_reason": None, "stop_reason": None}


def test_chat_stream_include_usage(sim: SimulatorThread) -> None:
    body = {"messages": [{"role": "user", "content": "x y z"}], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    events = _events(_post(sim, "/v1/chat/completions", body, stream=True))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:4]] == [{"content": f" tok{i}"} for i in (1, 2, 3)]
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3,
                                  "prompt_tokens_details": None}
    assert len(chunks) == 5


def test_stream_without_include_usage_has_no_usage_chunk(sim: SimulatorThread) -> None:
    events = _events(_post(sim, "/v1/completions", {"prompt": "x", "max_tokens": 2, "stream": True}, stream=True))
    assert len(events) == 3 and all("usage" not in e for e in events)


def test_timing_is_honoured(sim: SimulatorThread) -> None:
    t0 = time.monotonic()
    r = _post(sim, "/v1/completions", {"prompt": "x", "max_tokens": 6, "stream": True}, stream=True,
              headers={"x-sim-ttft": "0.15", "x-sim-itl": "0.04"})
    arrivals = []
    for line in r.iter_lines():
        if line.startswith(b"data: {"):
            arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    assert arrivals[0] - t0 >= 0.1  # ttft 0.15
    assert arrivals[-1] - arrivals[0] >= 0.12  # 5 gaps of 0.04 = 0.2

    t0 = time.monotonic()
    _post(sim, "/v1/completions", {"prompt": "x", "max_tokens": 3}, headers={"x-sim-ttft": "0.1", "x-sim-itl": "0.05"})
    assert time.monotonic() - t0 >= 0.15  # ttft + 2 * itl = 0.2


def test_request_id_echo(sim: SimulatorThread) -> None:
    r = _post(sim, "/v1/completions", {"prompt": "x", "max_tokens": 1}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == "cmpl-abc-123"
    r = _post(sim, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True},
              headers={"X-Request-ID": "xyz"}, stream=True)
    assert r.headers["x-request-id"] == "xyz"
    assert json.loads(_events(r)[0])["id"] == "chatcmpl-xyz"


def test_error_shapes(sim: SimulatorThread) -> None:
    r = requests.post(sim.url + "/v1/completions", data=b"{not json", timeout=TIMEOUT)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "BadRequestError" and err["code"] == 400 and err["param"] is None

    r = _post(sim, "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "NotFoundError" and r.json()["error"]["code"] == 404

    r = requests.get(sim.url + "/v2/nothing", timeout=TIMEOUT)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_keep_alive_pipelining_and_chunked_body(sim: SimulatorThread) -> None:
    body = json.dumps({"prompt": "x", "max_tokens": 2}).encode()
    one = (f"POST /v1/completions HTTP/1.1\r\nHost: s\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    with socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT) as s:
        s.sendall(one + chunked + one)  # three requests back to back on one connection
        data = b""
        while data.count(b'"completion_tokens":2') < 3:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_status_faults(sim: SimulatorThread, status: int) -> None:
    r = _post(sim, "/v1/completions", {"prompt": "x"}, headers={"x-sim-fault": f"status_{status}"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == status and set(err) == {"message", "type", "param", "code"}


def test_server_wide_fault() -> None:
    with SimulatorThread(port=0, fault="status_503") as s:
        assert _post(s, "/v1/completions", {"prompt": "x"}).status_code == 503
        assert requests.get(s.url + "/health", timeout=TIMEOUT).status_code == 200
    with pytest.raises(ValueError):
        SimConfig(fault="bogus")


def test_not_json_and_refuse(sim: SimulatorThread) -> None:
    r = _post(sim, "/v1/completions", {"prompt": "x"}, headers={"x-sim-fault": "not_json"})
    assert r.status_code == 200 and r.text == "<html>oops</html>"
    assert r.headers["content-type"].startswith("text/html")
    with pytest.raises(requests.ConnectionError):
        _post(sim, "/v1/completions", {"prompt": "x"}, headers={"x-sim-fault": "refuse"})


def test_stream_content_faults(sim: SimulatorThread) -> None:
    body = {"prompt": "x", "max_tokens": 4, "stream": True}
    r = _post(sim, "/v1/completions", body, headers={"x-sim-fault": "error_event"}, stream=True)
    events = _events(r)
    assert len(events) == 4 and events[-1] == "[DONE]"
    assert json.loads(events[2]) == {"error": {"message": "simulated engine failure", "type": "InternalServerError",
                                               "param": None, "code": 500}}

    lines = list(_post(sim, "/v1/completions", body, headers={"x-sim-fault": "malformed_sse"},
                       stream=True).iter_lines(decode_unicode=True))
    assert "garbage" in lines and lines.count("data: [DONE]") == 1

    events = _events(_post(sim, "/v1/completions", body, headers={"x-sim-fault": "invalid_json_chunk"}, stream=True))
    assert "{not json" in events and events[-1] == "[DONE]"


def test_cut_mid_chunk(sim: SimulatorThread) -> None:
    s = _raw(sim, "/v1/completions", {"prompt": "x", "max_tokens": 5, "stream": True},
             {"x-sim-fault": "cut_mid_chunk"})
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert b" tok2" in data and b"[DONE]" not in data and not data.endswith(b"\r\n\r\n")


def test_pause_mid_stream_with_pause_header(sim: SimulatorThread) -> None:
    t0 = time.monotonic()
    r = _post(sim, "/v1/completions", {"prompt": "x", "max_tokens": 4, "stream": True}, stream=True,
              headers={"x-sim-fault": "pause_mid_stream", "x-sim-pause": "0.3"})
    events = _events(r)
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert time.monotonic() - t0 >= 0.25


def test_huge(sim: SimulatorThread) -> None:
    r = _post(sim, "/v1/completions", {"prompt": "x"}, headers={"x-sim-fault": "huge"})
    assert len(r.json()["choices"][0]["text"]) >= 20 * 1024 * 1024


def test_hang_headers_then_client_gives_up(fresh: SimulatorThread) -> None:
    with pytest.raises(requests.ReadTimeout):
        requests.post(fresh.url + "/v1/completions", json={"prompt": "x"}, headers={"x-sim-fault": "hang_headers"},
                      timeout=(1, 0.3))
    assert fresh.wait_for(lambda st: st.cancelled == 1, timeout=2)


def test_unknown_fault_header_is_400(sim: SimulatorThread) -> None:
    assert _post(sim, "/v1/completions", {"prompt": "x"}, headers={"x-sim-fault": "nope"}).status_code == 400
    assert set(FAULTS) >= {"refuse", "huge", "status_503"}


# ---------------------------------------------------------------------- counters, cancellation, metrics


def test_counters_and_reset_over_http(fresh: SimulatorThread) -> None:
    _post(fresh, "/v1/completions", {"prompt": "x", "max_tokens": 3})
    _events(_post(fresh, "/v1/completions", {"prompt": "x", "max_tokens": 2, "stream": True}, stream=True))
    _post(fresh, "/v1/completions", {"prompt": "x"}, headers={"x-sim-fault": "status_500"})
    stats = requests.get(fresh.url + "/sim/stats", timeout=TIMEOUT).json()
    assert stats["requests_total"] == 3 and stats["completed"] == 2 and stats["failed"] == 1
    assert stats["tokens_generated"] == 5 and stats["cancelled"] == 0
    assert stats["active"] == stats["running"] == stats["waiting"] == 0
    assert fresh.stats.completed == 2
    reset = requests.post(fresh.url + "/sim/reset", timeout=TIMEOUT).json()
    assert reset["requests_total"] == 0 and reset["tokens_generated"] == 0
    assert fresh.stats.completed == 0


def test_cancel_mid_stream(fresh: SimulatorThread) -> None:
    s = _raw(fresh, "/v1/completions", {"prompt": "x", "max_tokens": 500, "stream": True}, {"x-sim-itl": "0.02"})
    _recv_until(s, b" tok3")
    assert fresh.stats.running == 1 and fresh.stats.active == 1
    s.close()
    assert fresh.wait_for(lambda st: st.cancelled == 1, timeout=1)
    assert fresh.stats.tokens_generated < 100
    assert fresh.stats.running == 0 and fresh.stats.active == 0 and fresh.stats.completed == 0


def test_cancel_during_ttft_is_prompt(fresh: SimulatorThread) -> None:
    s = _raw(fresh, "/v1/completions", {"prompt": "x", "max_tokens": 5}, {"x-sim-ttft": "10"})
    assert fresh.wait_for(lambda st: st.waiting == 1, timeout=1)
    assert fresh.stats.last_cancel_at == 0.0
    t0, closed_at = time.monotonic(), time.time()
    s.close()
    assert fresh.wait_for(lambda st: st.cancelled == 1, timeout=1)
    assert time.monotonic() - t0 < 0.5  # the simulator watches for EOF; it does not wait out the 10 s
    assert fresh.stats.waiting == 0 and fresh.stats.tokens_generated == 0
    # The moment of the cancellation, on the wall clock benchmarks compare it with.
    assert closed_at <= fresh.snapshot()["last_cancel_at"] < closed_at + 0.5


def test_cancel_while_queued_and_metrics() -> None:
    with SimulatorThread(port=0, max_num_seqs=1) as s:
        holder = _raw(s, "/v1/completions", {"prompt": "x", "max_tokens": 500, "stream": True}, {"x-sim-itl": "0.02"})
        _recv_until(holder, b" tok1")
        queued = _raw(s, "/v1/completions", {"prompt": "x", "max_tokens": 5})
        assert s.wait_for(lambda st: st.waiting == 1 and st.running == 1, timeout=1)

        metrics = requests.get(s.url + "/metrics", timeout=TIMEOUT).text
        assert "# TYPE vllm:num_requests_running gauge" in metrics
        assert 'vllm:num_requests_running{engine="0",model_name="sim-model"} 1.0' in metrics
        assert 'vllm:num_requests_waiting{engine="0",model_name="sim-model"} 1.0' in metrics
        assert 'vllm:kv_cache_usage_perc{engine="0",model_name="sim-model"} 1.0' in metrics

        t0 = time.monotonic()
        queued.close()
        assert s.wait_for(lambda st: st.cancelled == 1, timeout=1)
        assert time.monotonic() - t0 < 0.5
        assert s.stats.waiting == 0 and s.stats.running == 1

        holder.close()
        assert s.wait_for(lambda st: st.cancelled == 2 and st.running == 0, timeout=1)
        metrics = requests.get(s.url + "/metrics", timeout=TIMEOUT).text
        assert 'vllm:num_requests_running{engine="0",model_name="sim-model"} 0.0' in metrics
        assert 'vllm:kv_cache_usage_perc{engine="0",model_name="sim-model"} 0.0' in metrics


def test_cancel_during_ttft_frees_the_slot() -> None:
    with SimulatorThread(port=0, max_num_seqs=1) as s:
        for _ in range(2):
            sock = _raw(s, "/v1/completions", {"prompt": "x"}, {"x-sim-ttft": "10"})
            assert s.wait_for(lambda st: st.waiting == 1, timeout=1)
            sock.close()
            assert s.wait_for(lambda st: st.waiting == 0, timeout=1)
        assert _post(s, "/v1/completions", {"prompt": "x", "max_tokens": 2}).status_code == 200
        assert s.stats.cancelled == 2 and s.stats.completed == 1


def test_queue_limits_concurrency() -> None:
    with SimulatorThread(port=0, max_num_seqs=2, itl=0.02) as s:
        socks = [_raw(s, "/v1/completions", {"prompt": "x", "max_tokens": 10, "stream": True}) for _ in range(4)]
        assert s.wait_for(lambda st: st.running == 2 and st.waiting == 2, timeout=1)
        for sock in socks:
            _recv_until(sock, b"[DONE]")
            sock.close()
        assert s.wait_for(lambda st: st.completed == 4 and st.running == 0 and st.waiting == 0, timeout=1)


def test_pooling_runner_serves_embeddings_and_scores_not_chat():
    with SimulatorThread(SimConfig(port=0, models=("minilm",), runner="pooling")) as sim:
        embedded = requests.post(sim.url + "/v1/embeddings", json={"model": "minilm", "input": ["a b", "c"]}, timeout=5)
        assert [d["index"] for d in embedded.json()["data"]] == [0, 1]
        assert embedded.json()["usage"]["prompt_tokens"] == 3
        score = requests.post(sim.url + "/score", json={"text_1": "a", "text_2": ["a", "b"]}, timeout=5).json()
        assert score["data"][0]["score"] == pytest.approx(1.0, abs=1e-4) and len(score["data"]) == 2
        ranked = requests.post(sim.url + "/v2/rerank", json={"query": "a", "documents": ["b", "a"]}, timeout=5).json()
        assert ranked["results"][0]["index"] == 1
        chat = requests.post(sim.url + "/v1/chat/completions", json={"messages": []}, timeout=5)
        assert chat.status_code == 404 and chat.json() == {"detail": "Not Found"}
        assert "/v1/embeddings" in requests.get(sim.url + "/openapi.json", timeout=5).json()["paths"]


def test_generate_runner_answers_responses_with_named_events_and_tokenizes():
    with SimulatorThread(SimConfig(port=0)) as sim:
        whole = requests.post(sim.url + "/v1/responses", json={"input": "hi there", "max_output_tokens": 3},
                              timeout=5).json()
        assert whole["usage"] == {"input_tokens": 2, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5}
        streamed = requests.post(sim.url + "/v1/responses", json={"input": "hi", "max_output_tokens": 2,
                                                                  "stream": True}, timeout=5).text
        names = [block.split("\n")[0] for block in streamed.strip().split("\n\n")]
        assert names[0] == "event: response.created" and names[-1] == "event: response.completed"
        assert names.count("event: response.output_text.delta") == 2 and "[DONE]" not in streamed
        tokens = requests.post(sim.url + "/tokenize", json={"prompt": "héllo"}, timeout=5).json()["tokens"]
        assert requests.post(sim.url + "/detokenize", json={"tokens": tokens}, timeout=5).json() == {"prompt": "héllo"}
        assert requests.post(sim.url + "/v1/embeddings", json={"input": "x"}, timeout=5).status_code == 404
