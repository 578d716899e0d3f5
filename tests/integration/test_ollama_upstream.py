"""Every surface in front of an Ollama-shaped upstream (bench/ollama_simulator.py: NDJSON streams)."""
from __future__ import annotations

import json

import openai
import pytest
import requests
import websocket

from bench.processes import Gateway, OllamaSimulator, wait_until
from bench.sse_client import stream

MODEL = "sim-llama:latest"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ollama(tmp_logs):
    """An Ollama-shaped server producing a token every 20 ms."""
    server = OllamaSimulator("--itl", "0.02", log=tmp_logs / "ollama-simulator.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(ollama, tmp_logs):
    gw = Gateway({"SLUICE_UPSTREAM_URL": ollama.url, "SLUICE_UPSTREAM_KIND": "ollama"},
                 log=tmp_logs / "ollama-gateway.log")
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_ready_and_models(gateway, client):
    assert requests.get(gateway.url + "/readyz", timeout=5).status_code == 200
    assert [m.id for m in client.models.list()] == [MODEL]


def test_openai_chat_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " tok1 tok2 tok3 tok4"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 4)


def test_openai_completion_blocking(client):
    answer = client.completions.create(model=MODEL, prompt="one two", max_tokens=3)
    assert answer.choices[0].text == " tok1 tok2 tok3" and answer.usage.total_tokens == 5


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="llama9", messages=ASK)
    # The replica's model list (from Ollama's /api/tags) says it is not there: no request is sent.
    assert caught.value.body["code"] == "model_not_found"
    assert "llama9" in caught.value.body["message"] and "sim-llama:latest" in caught.value.body["message"]


def test_native_stream_uses_the_upstreams_first_model(gateway):
    result = stream(gateway.url + "/v1/generate/stream", {"prompt": "one two three", "max_tokens": 5})
    assert result.status == 200 and result.done
    assert [e["text"] for e in result.text_events] == [f" tok{i}" for i in range(1, 6)]
    assert result.events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_websocket_cancel_stops_ollama(gateway, ollama):
    before = ollama.stats()["cancelled"]
    ws = websocket.create_connection(gateway.url.replace("http://", "ws://") + "/v1/generate/ws", timeout=10)
    try:
        ws.send(json.dumps({"prompt": "long", "max_tokens": 2000}))
        assert json.loads(ws.recv())["type"] == "token"
        ws.send(json.dumps({"type": "cancel"}))
        while (message := json.loads(ws.recv()))["type"] == "token":
            pass
        assert message["finish_reason"] == "cancelled"
    finally:
        ws.close()
    wait_until(lambda: ollama.stats()["cancelled"] > before, 2.0, "Ollama noticing the cancel")
    assert ollama.stats()["running"] == 0
