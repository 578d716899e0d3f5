"""The native API through real gunicorn in front of a real vLLM: blocking, streaming, readiness."""
from __future__ import annotations

import time

import pytest
import requests

from bench.sse_client import stream
from tests.e2e.clients import LONG_PROMPT

pytestmark = pytest.mark.e2e

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def direct_completion(engine, body: dict) -> dict:
    """The same request sent straight to the engine's /v1/completions."""
    reply = requests.post(engine.spec.url + "/v1/completions",
                          json={**body, "model": engine.spec.served_model_name}, timeout=120)
    reply.raise_for_status()
    return reply.json()


def test_generate_returns_what_the_engine_reports(gateway, engine):
    body = {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0, "seed": 7}
    reply = requests.post(gateway.url + "/v1/generate", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert set(answer) == {"id", "model", "text", "finish_reason", "usage"}
    assert answer["model"] == engine.spec.served_model_name

    direct = direct_completion(engine, body)
    assert {k: answer["usage"][k] for k in USAGE_KEYS} == {k: direct["usage"][k] for k in USAGE_KEYS}
    assert answer["usage"]["completion_tokens"] == 16
    # Greedy decoding, one request at a time: the gateway relays exactly the engine's text.
    assert answer["text"] == direct["choices"][0]["text"]
    assert answer["finish_reason"] == direct["choices"][0]["finish_reason"] == "length"


def test_stream_arrives_piece_by_piece_and_ends_with_usage(gateway, engine):
    body = {"prompt": LONG_PROMPT, "max_tokens": 32, "temperature": 0, "seed": 7}
    result = stream(gateway.url + "/v1/generate/stream", body, timeout=120)
    assert result.status == 200, result.events
    assert result.done, "the stream must end with data: [DONE]"
    events = result.events[:-1]
    for event in events:
        assert {"id", "text", "finish_reason"} <= set(event), event
    last = events[-1]
    assert last["usage"]["completion_tokens"] == 32
    assert last["finish_reason"] == "length"
    assert all("usage" not in event for event in events[:-1])

    # Many chunks, spread over the generation rather than delivered at the end.
    texts = [i for i, event in enumerate(events) if event["text"]]
    assert len(texts) >= 16, f"only {len(texts)} text events"
    first, final = result.times[texts[0]], result.times[texts[-1]]
    assert final - first > 0.5, f"all text arrived within {final - first:.2f} s: buffered?"
    assert first < (final - first), f"first text at {first:.2f} s, last at {final:.2f} s"

    direct = direct_completion(engine, body)
    assert "".join(event["text"] for event in events) == direct["choices"][0]["text"]
    assert {k: last["usage"][k] for k in USAGE_KEYS} == {k: direct["usage"][k] for k in USAGE_KEYS}


def test_readyz_follows_the_engine_state_file(gateway, engine, engine_state):
    assert requests.get(gateway.url + "/readyz", timeout=10).status_code == 200
    engine_state.write("restarting", "the engine exited with code -9; restart 1 of 5", engine.pid, 0)
    try:
        reply = requests.get(gateway.url + "/readyz", timeout=10)
        assert reply.status_code == 503
        assert "the engine exited with code -9" in reply.json()["error"]["message"]
    finally:
        engine_state.write("running", "", engine.pid, 1)
    deadline = time.monotonic() + 5
    while requests.get(gateway.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readyz stayed 503 after the engine ran again"
        time.sleep(0.1)
