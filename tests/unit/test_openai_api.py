"""The OpenAI-compatible API through the real views: validation, unknown fields, model names, relayed streams."""
from __future__ import annotations

import json

import pytest
import responses

from app.config import ConfigError
from app.upstream.models import parse_model_map
from bench.sse_client import events_of
from tests.conftest import UPSTREAM

CHAT_URL, COMPLETIONS_URL = f"{UPSTREAM}/v1/chat/completions", f"{UPSTREAM}/v1/completions"
USER = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "sim-model",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
COMPLETION_ANSWER = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "sim-model",
                     "choices": [{"index": 0, "text": " Paris", "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

# vLLM's chat stream as it writes it: compact JSON, the usage chunk last when asked for.
VLLM_CHAT_CHUNKS = [
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1736848867,"model":"sim-model",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1736848867,"model":"sim-model",'
    b'"choices":[{"index":0,"delta":{"content":"Paris"},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1736848867,"model":"sim-model",'
    b'"choices":[{"index":0,"delta":{"content":"."},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n',
]
VLLM_CHAT_STREAM = b"".join(VLLM_CHAT_CHUNKS)
VLLM_USAGE = (b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":1736848867,"model":"sim-model",'
              b'"choices":[],"usage":{"prompt_tokens":9,"total_tokens":11,"completion_tokens":2}}\n\n')
DONE = b"data: [DONE]\n\n"


def forwarded() -> dict:
    return json.loads(responses.calls[-1].request.body)


VALID_CHAT = [
    {"messages": USER},
    {"messages": USER, "max_tokens": 4096, "max_completion_tokens": 1},
    {"messages": USER, "temperature": 0, "top_p": 1, "n": 2, "seed": 7, "user": "u-1"},
    {"messages": USER, "stop": "\n", "presence_penalty": -2, "frequency_penalty": 2, "logit_bias": {"50256": -100}},
    {"messages": USER, "logprobs": True, "top_logprobs": 20},
    {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
     "parallel_tool_calls": False},
    {"messages": USER, "tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"messages": USER, "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True},
    {"messages": USER, "max_tokens": None, "temperature": None},  # null: not given
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Really."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,x"}}]},
                  {"role": "assistant", "content": None, "refusal": None,
                   "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "42"}]},
]

INVALID_CHAT = [
    ({}, "messages", "Missing data"),
    ({"messages": []}, "messages", "Must not be empty"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "Must be one of"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "Missing data"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "string or a list of content parts"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content", "string `text`"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"messages": USER, "max_completion_tokens": 4097}, "max_completion_tokens", "at most 4096"),
    ({"messages": USER, "temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"messages": USER, "n": 0}, "n", "greater than or equal to 1"),
    ({"messages": USER, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options", "Only allowed when stream"),
    ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format", "`type` must be one of"),
    ({"messages": USER, "tools": [{"function": {}}]}, "tools", "string `type`"),
    ({"messages": USER, "tool_choice": "always"}, "tool_choice", "Must be one of none, auto, required"),
    ({"messages": [{"role": "user", "content": "x" * 32_001}]}, "messages", "at most 32000"),
    ({"messages": USER, "structured_outputs": ["yes"]}, "structured_outputs", "Not a valid mapping"),
    ({"messages": USER, "chat_template_kwargs": "thinking"}, "chat_template_kwargs", "Not a valid mapping"),
    ({"messages": USER, "priority": "high"}, "priority", "Not a valid integer"),
]
# Rejected only with SLUICE_UNKNOWN_FIELDS=reject (by default they go upstream).
UNKNOWN_CHAT = [
    ({"messages": [{"role": "user", "content": "x", "contnet": "y"}]}, "messages.0.contnet"),
    ({"messages": USER, "stream": True, "stream_options": {"usage": True}}, "stream_options.usage"),
    ({"messages": USER, "temprature": 1}, "temprature"),
]


@responses.activate
@pytest.mark.parametrize("body", VALID_CHAT)
def test_valid_chat_bodies_are_forwarded_as_sent(client, body):
    responses.post(CHAT_URL, json=CHAT_ANSWER)
    reply = client.post("/v1/chat/completions", json={"model": "sim-model", **body})
    assert reply.status_code == 200, reply.json
    expected = {key: value for key, value in body.items() if value is not None}
    if isinstance(expected.get("stop"), str):
        expected["stop"] = [expected["stop"]]  # one stop string goes as a list: the same to vLLM
    assert forwarded() == {"model": "sim-model", **expected}


@pytest.mark.parametrize("body, param, rule", INVALID_CHAT)
def test_invalid_chat_bodies_get_422_naming_field_and_rule(client, body, param, rule):
    reply = client.post("/v1/chat/completions", json={"model": "sim-model", **body})
    assert reply.status_code == 422
    error = reply.json["error"]
    assert error["param"] == param and rule in error["message"], error


@responses.activate
@pytest.mark.parametrize("prompt", ["x", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompts_vllm_accepts(client, prompt):
    responses.post(COMPLETIONS_URL, json=COMPLETION_ANSWER)
    reply = client.post("/v1/completions", json={"model": "sim-model", "prompt": prompt, "echo": True,
                                                 "logprobs": 5, "suffix": "!", "best_of": 1})
    assert reply.status_code == 200, reply.json
    assert reply.json == COMPLETION_ANSWER, "a blocking answer is returned as the upstream wrote it"
    assert forwarded()["prompt"] == prompt


@pytest.mark.parametrize("body, param, rule", [
    ({}, "prompt", "Missing data"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": [1, "a"]}, "prompt", "non-empty"),
    ({"prompt": "x" * 32_001}, "prompt", "at most 32000"),
    ({"prompt": "x", "logprobs": 21}, "logprobs", "less than or equal to 20"),
])
def test_invalid_completion_bodies(client, body, param, rule):
    reply = client.post("/v1/completions", json={"model": "sim-model", **body})
    assert reply.status_code == 422
    assert reply.json["error"]["param"] == param and rule in reply.json["error"]["message"]


@responses.activate
def test_vllm_fields_pass_through_by_default(client):
    responses.post(CHAT_URL, json=CHAT_ANSWER)
    body = {"model": "sim-model", "structured_outputs": {"choice": ["yes", "no"]}, "priority": -1,
            "chat_template_kwargs": {"enable_thinking": False}, "prompt_logprobs": 1, "vllm_xargs": {"a": 1},
            "guided_choice": ["yes", "no"],
            "messages": [{"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert forwarded() == body
    assert client.post("/v1/chat/completions", json={**body, "temperature": 9}).status_code == 422, \
        "known fields are still checked"


@pytest.mark.parametrize("body, param", UNKNOWN_CHAT)
def test_unknown_fields_rejected_when_configured(make_app, body, param):
    reply = make_app(UNKNOWN_FIELDS="reject").test_client().post("/v1/chat/completions",
                                                                 json={"model": "sim-model", **body})
    assert reply.status_code == 422
    assert reply.json["error"]["param"] == param and "Unknown field (SLUICE_UNKNOWN_FIELDS=reject)" in \
        reply.json["error"]["message"]


# --- model names ---

@pytest.mark.parametrize("raw, expected", [
    ("", {}),
    ("gpt-4o-mini=smollm2", {"gpt-4o-mini": "smollm2"}),
    (" a = x , b=y ,", {"a": "x", "b": "y"}),
    ("org/model:v1.5=llama3.2:latest", {"org/model:v1.5": "llama3.2:latest"}),
])
def test_model_map_parses(raw, expected):
    assert parse_model_map(raw) == expected


@pytest.mark.parametrize("raw, named", [("gpt", "'gpt'"), ("=x", "'=x'"), ("a=", "'a='"), ("a=b=c", "'a=b=c'"),
                                        ("a=x,a=y", "'a' is mapped twice")])
def test_malformed_model_map_stops_start_up(make_app, raw, named):
    with pytest.raises(ConfigError, match=named):
        make_app(MODEL_MAP=raw)


@pytest.fixture
def mapped(make_app):
    return make_app(MODEL_MAP="gpt-4o-mini=sim-model,fast=sim-model").test_client()


@responses.activate
def test_mapped_name_goes_upstream_under_the_upstreams_name(mapped):
    responses.post(CHAT_URL, json=CHAT_ANSWER)
    reply = mapped.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": USER})
    assert forwarded()["model"] == "sim-model"
    assert reply.json["model"] == "gpt-4o-mini", "the answer names the model the client asked for"
    responses.post(COMPLETIONS_URL, json=COMPLETION_ANSWER)
    native = mapped.post("/v1/generate", json={"prompt": "x", "model": "fast"})
    assert forwarded()["model"] == "sim-model" and native.json["model"] == "fast"


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", {"messages": USER}),
                                        ("/v1/completions", {"prompt": "x"}),
                                        ("/v1/generate", {"prompt": "x"})])
def test_unmapped_name_is_404_without_asking_the_upstream(mapped, path, body):
    reply = mapped.post(path, json={"model": "sim-model", **body})  # served upstream, but not offered
    assert reply.status_code == 404
    assert reply.json["error"] == {"message": "The model `sim-model` does not exist; GET /v1/models lists the models.",
                                   "type": "not_found_error", "param": "model", "code": "model_not_found"}


def test_models_lists_the_map_without_asking_the_upstream(mapped):
    listing = mapped.get("/v1/models").json
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listing["data"]] == [
        ("gpt-4o-mini", "model", "sluice"), ("fast", "model", "sluice")]


@responses.activate
def test_models_without_a_map_lists_what_the_replicas_serve(client):
    upstream_list = {"object": "list", "data": [{"id": "sim-model", "object": "model", "created": 5,
                                                 "owned_by": "vllm", "max_model_len": 2048},
                                                {"id": "other-model", "object": "model", "created": 5,
                                                 "owned_by": "vllm", "max_model_len": 2048}]}
    responses.get(f"{UPSTREAM}/v1/models", json=upstream_list)
    listing = client.get("/v1/models").json
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listing["data"]] == [
        ("sim-model", "model", "vllm"), ("other-model", "model", "vllm")]


# --- relayed streams ---

def chat_stream(client, upstream_body: bytes, **body) -> bytes:
    responses.post(CHAT_URL, body=upstream_body, content_type="text/event-stream")
    reply = client.post("/v1/chat/completions", json={"messages": USER, "stream": True, **body})
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    return reply.data


@responses.activate
def test_stream_is_relayed_byte_for_byte(client):
    upstream = VLLM_CHAT_STREAM + VLLM_USAGE + DONE
    assert chat_stream(client, upstream, model="sim-model", stream_options={"include_usage": True}) == upstream


@responses.activate
def test_usage_is_always_asked_for_and_dropped_when_the_client_did_not_ask(client):
    got = chat_stream(client, VLLM_CHAT_STREAM + VLLM_USAGE + DONE, model="sim-model")
    assert forwarded()["stream_options"] == {"include_usage": True}
    assert got == VLLM_CHAT_STREAM + DONE


@responses.activate
def test_renamed_model_is_rewritten_in_each_chunk_and_nothing_else(make_app):
    client = make_app(MODEL_MAP='my "quoted" model=sim-model').test_client()
    upstream = VLLM_CHAT_STREAM + VLLM_USAGE + DONE
    got = chat_stream(client, upstream, model='my "quoted" model', stream_options={"include_usage": True})
    assert got == upstream.replace(b'"model":"sim-model"', b'"model":"my \\"quoted\\" model"')
    assert {e["model"] for e in events_of(got)[:-1]} == {'my "quoted" model'}


@responses.activate
def test_upstream_error_event_ends_the_stream_in_our_shape(client):
    error = b'data: {"error":{"message":"engine died","type":"InternalServerError","param":null,"code":500}}\n\n'
    got = events_of(chat_stream(client, VLLM_CHAT_CHUNKS[0] + error + DONE, model="sim-model"))
    assert got[-1] == "[DONE]"
    assert got[-2]["error"]["code"] == "upstream_stream_error" and "engine died" in got[-2]["error"]["message"]
