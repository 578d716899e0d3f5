"""vLLM's other routes through real gunicorn, in front of two simulated replicas: a chat model and a pooling model.

The `openai` package's own calls (responses, embeddings) and plain HTTP for vLLM's routes
(tokenize, score, rerank); each request goes to the replica serving its model, and is
counted in the metrics and the per-request log line like a chat.
"""
from __future__ import annotations

import json
import socket

import openai
import pytest
import requests

from bench.processes import Gateway, Simulator, wait_until

CHAT_MODEL, EMBEDDING_MODEL = "sim-model", "minilm"


@pytest.fixture(scope="module")
def replicas(tmp_logs):
    chat = Simulator("--itl", "0.02", log=tmp_logs / "routes-chat.log")
    pooling = Simulator("--model", EMBEDDING_MODEL, "--runner", "pooling", log=tmp_logs / "routes-pooling.log")
    yield chat, pooling
    chat.stop()
    pooling.stop()


@pytest.fixture(scope="module")
def pair_gateway(replicas, tmp_logs):
    chat, pooling = replicas
    gw = Gateway({"SLUICE_UPSTREAM_URL": f"{chat.url},{pooling.url}"}, log=tmp_logs / "routes-gateway.log")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def client(pair_gateway):
    return openai.OpenAI(base_url=pair_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_lists_both_replicas_models(client):
    assert sorted(m.id for m in client.models.list().data) == [EMBEDDING_MODEL, CHAT_MODEL]


def test_embeddings_through_the_openai_client(client):
    default = client.embeddings.create(model=EMBEDDING_MODEL, input=["a b c", "d"])  # base64 on the wire
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=["a b c", "d"], encoding_format="float")
    assert [len(e.embedding) for e in default.data] == [8, 8]
    for as_floats, as_base64 in zip(floats.data, default.data, strict=True):
        assert as_floats.embedding == pytest.approx(as_base64.embedding, abs=1e-6)
    assert floats.usage.prompt_tokens == 4 and floats.model == EMBEDDING_MODEL


def test_responses_blocking_and_streaming(client):
    answer = client.responses.create(model=CHAT_MODEL, input="Say something", max_output_tokens=5)
    assert answer.output_text == " tok1 tok2 tok3 tok4 tok5" and answer.usage.output_tokens == 5
    with client.responses.stream(model=CHAT_MODEL, input="Say something", max_output_tokens=5) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5 and final.output_text == answer.output_text


def test_a_chat_sent_to_the_pooling_model_is_a_bad_request_naming_it(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "wrong_model_type"
    assert "Model `minilm` does not serve POST /v1/chat/completions: it is a pooling model" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="it is a generative model"):
        client.embeddings.create(model=CHAT_MODEL, input="hi")


def test_tokenize_detokenize_score_and_rerank(pair_gateway):
    url = pair_gateway.url
    tokens = requests.post(url + "/tokenize", json={"model": CHAT_MODEL, "prompt": "héllo wörld"}, timeout=10).json()
    assert tokens["count"] == len("héllo wörld")
    back = requests.post(url + "/detokenize", json={"model": CHAT_MODEL, "tokens": tokens["tokens"]}, timeout=10)
    assert back.json() == {"prompt": "héllo wörld"}
    scores = requests.post(url + "/score", json={"model": EMBEDDING_MODEL, "text_1": "a", "text_2": ["a", "b"]},
                           timeout=10).json()
    assert scores["data"][0]["score"] == pytest.approx(1.0, abs=1e-4) and scores["usage"]["prompt_tokens"] == 3
    ranked = requests.post(url + "/v1/rerank", json={"model": EMBEDDING_MODEL, "query": "a", "documents": ["b", "a"]},
                           timeout=10).json()
    assert ranked["results"][0]["index"] == 1


def test_new_routes_are_counted_in_metrics_and_logged(pair_gateway, replicas, client):
    client.embeddings.create(model=EMBEDDING_MODEL, input="one two three")
    metrics = requests.get(pair_gateway.url + "/metrics", timeout=10).text.splitlines()
    assert any(line.startswith("sluice_generations_total{") and 'route="/v1/embeddings"' in line for line in metrics)
    assert any(line.startswith("sluice_prompt_tokens_total{") and 'model="minilm"' in line for line in metrics)
    lines = [json.loads(line) for line in pair_gateway.log_path.read_text().splitlines()
             if line.startswith("{") and '"event": "generation"' in line]
    embedded = [line for line in lines if line["route"] == "/v1/embeddings"]
    assert embedded and embedded[-1]["prompt_tokens"] == 3 and embedded[-1]["outcome"] == "completed"
    assert embedded[-1]["replica"] == replicas[1].url, "served by the pooling replica"


def test_a_responses_stream_left_by_its_client_is_cancelled_upstream(pair_gateway, replicas):
    chat, _ = replicas
    before = chat.stats()["cancelled"]
    body = json.dumps({"model": CHAT_MODEL, "input": "tell a story", "max_output_tokens": 400, "stream": True})
    with socket.create_connection(("127.0.0.1", pair_gateway.port), timeout=30) as sock:
        sock.sendall((f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        received = b""
        while received.count(b"response.output_text.delta\n") < 3:
            received += sock.recv(65536)
    # 400 tokens 20 ms apart would take 8 s: the upstream sees its client gone long before.
    wait_until(lambda: chat.stats()["cancelled"] > before, 5, "upstream cancellation")
