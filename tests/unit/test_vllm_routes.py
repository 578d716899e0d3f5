"""vLLM's other routes through the real views: validation, routing by model and route, usage, named-event streams."""
from __future__ import annotations

import json

import pytest
import responses

from app.exchange import finished
from app.upstream.capabilities import GENERATION_ROUTES, POOLING_ROUTES
from tests.conftest import UPSTREAM

EMBEDDER = "http://embedder.test:8000"
EMBEDDING = {"id": "embd-1", "object": "list", "created": 1, "model": "minilm",
             "data": [{"index": 0, "object": "embedding", "embedding": [0.1, 0.2]}],
             "usage": {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0, "prompt_tokens_details": None}}
SCORE = {"id": "score-1", "object": "list", "created": 1, "model": "minilm",
         "data": [{"index": 0, "object": "score", "score": 0.8}], "usage": {"prompt_tokens": 6, "total_tokens": 6}}
RERANK = {"id": "rerank-1", "model": "minilm", "usage": {"prompt_tokens": 9, "total_tokens": 9},
          "results": [{"index": 1, "document": {"text": "b"}, "relevance_score": 0.9}]}
RESPONSE = {"id": "resp_1", "object": "response", "model": "sim-model", "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}],
            "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}}


def named(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


RESPONSE_STREAM = (named("response.created", {"response": {**RESPONSE, "status": "in_progress", "usage": None}})
                   + named("response.output_text.delta", {"delta": "H"})
                   + named("response.output_text.delta", {"delta": "i"})
                   + named("response.completed", {"response": RESPONSE}))


@pytest.fixture
def pair(make_app):
    """Two replicas, as `sluice serve` runs them: a chat model and an embedding model, routes known."""
    app = make_app(UPSTREAM_URL=f"{UPSTREAM},{EMBEDDER}", MODEL="")
    chat, embedder = app.extensions["sluice.upstream"].replicas
    chat.models, chat.routes = ("sim-model",), frozenset(GENERATION_ROUTES + ("/tokenize", "/detokenize"))
    embedder.models, embedder.routes = ("minilm",), frozenset(POOLING_ROUTES + ("/tokenize", "/detokenize"))
    return app.test_client()


@pytest.fixture
def usage_seen():
    """The (prompt, completion) tokens of each exchange that finishes."""
    seen: list[tuple[str, int, int]] = []

    def record(exchange):
        seen.append((exchange.route, exchange.prompt_tokens, exchange.completion_tokens))

    finished.connect(record)
    yield seen
    finished.disconnect(record)


@responses.activate
def test_each_model_goes_to_the_replica_that_serves_it(pair, usage_seen):
    responses.post(f"{EMBEDDER}/v1/embeddings", json=EMBEDDING)
    responses.post(f"{EMBEDDER}/score", json=SCORE)
    reply = pair.post("/v1/embeddings", json={"model": "minilm", "input": ["a b c"], "encoding_format": "float"})
    assert reply.status_code == 200 and reply.json == EMBEDDING
    assert pair.post("/v1/score", json={"model": "minilm", "text_1": "a", "text_2": ["b", "c"]}).json == SCORE
    assert [call.request.url for call in responses.calls] == [f"{EMBEDDER}/v1/embeddings", f"{EMBEDDER}/score"]
    assert usage_seen == [("/v1/embeddings", 3, 0), ("/v1/score", 6, 0)], "input tokens are counted"


@responses.activate
@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_aliases_go_to_the_upstreams_rerank(pair, path):
    responses.post(f"{EMBEDDER}/rerank", json=RERANK)
    reply = pair.post(path, json={"model": "minilm", "query": "q", "documents": ["a", "b"], "top_n": 1})
    assert reply.status_code == 200 and reply.json == RERANK
    assert json.loads(responses.calls[0].request.body) == {"model": "minilm", "query": "q", "documents": ["a", "b"],
                                                          "top_n": 1}


@pytest.mark.parametrize("path, body, served", [
    ("/v1/chat/completions", {"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}, "pooling"),
    ("/v1/responses", {"model": "minilm", "input": "hi"}, "pooling"),
    ("/v1/embeddings", {"model": "sim-model", "input": "hi"}, "generative"),
    ("/score", {"model": "sim-model", "text_1": "a", "text_2": "b"}, "generative"),
])
def test_a_route_the_models_replicas_do_not_serve_is_a_400_naming_both(pair, path, body, served):
    reply = pair.post(path, json=body)
    assert reply.status_code == 400, reply.json
    error = reply.json["error"]
    assert error["code"] == "wrong_model_type" and error["param"] == "model"
    assert f"Model `{body['model']}` does not serve POST {path}" in error["message"]
    assert f"a {served} model" in error["message"]


def test_a_model_no_replica_serves_is_404_model_not_found(pair):
    reply = pair.post("/v1/embeddings", json={"model": "bert", "input": "hi"})
    assert reply.status_code == 404 and reply.json["error"]["code"] == "model_not_found"


@responses.activate
def test_an_upstreams_bare_route_404_is_explained_when_its_routes_are_unknown(client):
    responses.post(f"{UPSTREAM}/v1/embeddings", status=404, json={"detail": "Not Found"})
    reply = client.post("/v1/embeddings", json={"model": "sim-model", "input": "hi"})
    assert reply.status_code == 400 and reply.json["error"]["code"] == "wrong_model_type"
    assert "Model `sim-model` does not serve POST /v1/embeddings" in reply.json["error"]["message"]


@pytest.mark.parametrize("path, body, param, rule", [
    ("/v1/embeddings", {"input": ""}, "input", "non-empty"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "bytes"}, "encoding_format", "Must be one of"),
    ("/v1/embeddings", {"input": "x", "messages": [{"role": "user", "content": "y"}]}, "input", "either"),
    ("/v1/embeddings", {"input": "x" * 32_001}, "input", "at most 32000"),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ("/score", {"text_1": "a"}, "text_1", "one pair"),
    ("/score", {"text_1": "a", "text_2": "b", "queries": "c", "documents": "d"}, "text_1", "one pair"),
    ("/score", {"text_1": 5, "text_2": "b"}, "text_1", "Must be a text"),
    ("/rerank", {"query": "q"}, "documents", "Missing data"),
    ("/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, "top_n", "greater than or equal to 0"),
    ("/tokenize", {}, "prompt", "either `prompt` or `messages`"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt", "either"),
    ("/detokenize", {"tokens": [1, -2]}, "tokens.1", "greater than or equal to 0"),
    ("/detokenize", {}, "tokens", "Missing data"),
    ("/v1/responses", {}, "input", "Missing data"),
    ("/v1/responses", {"input": "x", "max_output_tokens": 4097}, "max_output_tokens", "at most 4096"),
    ("/v1/responses", {"input": "x", "background": True}, "background", "not served through the gateway"),
    ("/v1/responses", {"input": [1]}, "input", "list of input items"),
])
def test_invalid_bodies_get_422_naming_field_and_rule(client, path, body, param, rule):
    reply = client.post(path, json={"model": "sim-model", **body})
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["param"] == param and rule in reply.json["error"]["message"], reply.json


@responses.activate
def test_tokenize_round_trip_spends_no_tokens(make_app, usage_seen):
    client = make_app(DEFAULT_TPM=10).test_client()
    responses.post(f"{UPSTREAM}/tokenize", json={"count": 3, "max_model_len": 2048, "tokens": [1, 2, 3]})
    responses.post(f"{UPSTREAM}/detokenize", json={"prompt": "a b c"})
    long_text = "word " * 100  # about 125 tokens: more than the key's whole limit, were it counted
    assert client.post("/tokenize", json={"prompt": long_text}).json["tokens"] == [1, 2, 3]
    assert client.post("/detokenize", json={"tokens": [1, 2, 3]}).json == {"prompt": "a b c"}
    assert json.loads(responses.calls[0].request.body) == {"prompt": long_text, "model": "sim-model"}
    assert [(prompt, completion) for _, prompt, completion in usage_seen] == [(0, 0), (0, 0)]


@responses.activate
def test_pooling_requests_reserve_their_input_only(make_app):
    """A key with 60 tokens a window may embed short texts, where a chat reserving max_tokens would be refused."""
    client = make_app(DEFAULT_TPM=60).test_client()
    responses.post(f"{UPSTREAM}/v1/embeddings", json=EMBEDDING)
    assert client.post("/v1/embeddings", json={"input": ["a short text"] * 4}).status_code == 200
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 100})
    assert chat.status_code == 429 and chat.json["error"]["code"] == "token_limit_exceeded"


@responses.activate
def test_responses_blocking_counts_input_and_output_tokens_under_the_clients_model_name(make_app, usage_seen):
    client = make_app(MODEL_MAP="gpt-4o-mini=sim-model").test_client()
    responses.post(f"{UPSTREAM}/v1/responses", json=RESPONSE)
    reply = client.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "Say hi", "max_output_tokens": 8,
                                               "reasoning": {"effort": "low"}, "vllm_only_field": 1})
    assert reply.status_code == 200 and reply.json["model"] == "gpt-4o-mini"
    assert json.loads(responses.calls[0].request.body) == {"model": "sim-model", "input": "Say hi",
                                                          "max_output_tokens": 8, "reasoning": {"effort": "low"},
                                                          "vllm_only_field": 1}
    assert usage_seen == [("/v1/responses", 7, 2)]


@responses.activate
def test_responses_stream_relays_named_events_as_they_are(client, usage_seen):
    responses.post(f"{UPSTREAM}/v1/responses", body=RESPONSE_STREAM, content_type="text/event-stream")
    reply = client.post("/v1/responses", json={"model": "sim-model", "input": "Say hi", "stream": True})
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    assert reply.data == RESPONSE_STREAM, "names and data unchanged, no [DONE] added"
    assert usage_seen == [("/v1/responses", 7, 2)], "the usage of response.completed"


@responses.activate
@pytest.mark.parametrize("tail, code", [
    (named("error", {"code": "500", "message": "engine died"}), "upstream_stream_error"),
    (b"", "upstream_truncated"),
])
def test_responses_stream_failures_end_with_an_error_event(client, tail, code):
    cut = RESPONSE_STREAM[:RESPONSE_STREAM.index(b"event: response.completed")]
    responses.post(f"{UPSTREAM}/v1/responses", body=cut + tail, content_type="text/event-stream")
    reply = client.post("/v1/responses", json={"model": "sim-model", "input": "Say hi", "stream": True})
    blocks = reply.data.decode().strip().split("\n\n")
    assert blocks[-1].startswith("event: error\ndata: ")
    error = json.loads(blocks[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and error["code"] == code and error["error"]["code"] == code
    assert blocks[:-1] == cut.decode().strip().split("\n\n"), "the events before it were relayed"


@responses.activate
def test_health_checks_read_a_vllm_replicas_routes_and_do_not_hammer_one_without_them(app):
    from app.upstream.health_checks import probe

    replica = app.extensions["sluice.upstream"].replicas[0]
    responses.get(f"{UPSTREAM}/health")
    responses.get(f"{UPSTREAM}/v1/models", json={"object": "list", "data": [{"id": "sim-model"}]})
    responses.get(f"{UPSTREAM}/metrics", body="", content_type="text/plain")
    openapi = responses.get(f"{UPSTREAM}/openapi.json", status=404, json={"detail": "Not Found"})
    probe(replica)
    probe(replica)
    assert replica.routes is None and openapi.call_count == 1, "unknown, and not asked again at once"
    replica.routes_retry_at = 0.0
    responses.replace(responses.GET, f"{UPSTREAM}/openapi.json",
                      json={"paths": {"/v1/embeddings": {"post": {}}, "/health": {"get": {}}, "/score": {"post": {}}}})
    probe(replica)
    assert replica.routes == frozenset({"/v1/embeddings", "/score"})
