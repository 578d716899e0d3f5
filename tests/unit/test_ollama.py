"""The Ollama upstream: OpenAI-shaped requests to Ollama's native API and back, on recorded wire formats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses

from app.config import SETTINGS_BY_NAME
from app.errors import InvalidRequest
from app.upstream import CLIENT_KINDS, make_client
from app.upstream.ollama import NDJSONLines, OllamaResponse
from app.upstream.ollama_wire import CHAT, COMPLETIONS, Answer, ollama_request
from app.upstream.sse import EventTooLarge
from bench.sse_client import events_of
from tests.conftest import UPSTREAM

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"
MODEL = "llama3.2:latest"


def recorded(name: str) -> bytes:
    return (RECORDED / name).read_bytes()


@pytest.fixture
def client(make_app):
    return make_app(UPSTREAM_KIND="ollama", MODEL=MODEL).test_client()


def answer_with(name: str, path: str) -> None:
    """Serve a recorded Ollama answer at `path` (NDJSON when the recording is a stream)."""
    stream = name.endswith(".ndjson")
    responses.post(UPSTREAM + path, body=recorded(name),
                   content_type="application/x-ndjson" if stream else "application/json; charset=utf-8")


def sent() -> dict:
    """The body Sluice sent to Ollama."""
    return json.loads(responses.calls[-1].request.body)


@responses.activate
def test_native_generate_goes_to_api_generate_raw_with_options(client):
    answer_with("generate.json", "/api/generate")
    reply = client.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 20, "temperature": 0,
                                              "stop": ["\n"], "seed": 3}, headers={"X-Request-ID": "r-1"})
    assert reply.status_code == 200, reply.json
    assert sent() == {"model": MODEL, "stream": False, "prompt": "The sky is", "raw": True,
                      "options": {"num_predict": 20, "temperature": 0.0, "stop": ["\n"], "seed": 3}}
    body = reply.json
    assert body["id"] == "cmpl-r-1" and body["model"] == MODEL
    assert body["text"].startswith(" blue because") and body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 20, "total_tokens": 26}


@responses.activate
def test_native_stream_from_ndjson(client):
    answer_with("generate_stream.ndjson", "/api/generate")
    got = events_of(client.post("/v1/generate/stream", json={"prompt": "The sky is", "max_tokens": 3}).data)
    assert [e["text"] for e in got[:3]] == [" blue", " because", " of"]
    assert got[-2]["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}
    assert got[-2]["finish_reason"] == "stop" and got[-1] == "[DONE]"
    assert sent()["stream"] is True


@responses.activate
def test_chat_blocking(client):
    answer_with("chat.json", "/api/chat")
    reply = client.post("/v1/chat/completions", json={
        "model": MODEL, "max_completion_tokens": 50,
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Capital of"},
                                                  {"type": "text", "text": "France?"}]}]})
    assert reply.status_code == 200, reply.json
    assert sent()["messages"] == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Capital of\nFrance?"}]
    assert sent()["options"] == {"num_predict": 50}
    body = reply.json
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 33, "completion_tokens": 8, "total_tokens": 41}


@responses.activate
def test_chat_tool_calls_become_openai_tool_calls(client):
    answer_with("chat_tool_calls.json", "/api/chat")
    tools = [{"type": "function", "function": {"name": "get_current_weather", "parameters": {"type": "object"}}}]
    reply = client.post("/v1/chat/completions", json={
        "model": MODEL, "tools": tools, "tool_choice": "auto",
        "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert sent()["tools"] == tools
    choice = reply.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {"format": "celsius", "location": "Paris, FR"}


def chat_stream(client, recording: str, **body) -> list:
    """The SSE events a client gets for a streamed chat whose Ollama answer is `recording`."""
    answer_with(recording, "/api/chat")
    reply = client.post("/v1/chat/completions", json={
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Capital of France?"}], **body})
    return events_of(reply.data)


@responses.activate
def test_chat_stream_is_openai_chunks_without_unasked_usage(client):
    got = chat_stream(client, "chat_stream.ndjson")
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "The"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "The capital is Paris."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in chunks), "the client did not ask for the usage chunk"


@responses.activate
def test_chat_stream_tool_calls(client):
    chunks = chat_stream(client, "chat_tool_calls_stream.ndjson", stream_options={"include_usage": True})[:-1]
    [call] = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "get_current_weather"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 122, "completion_tokens": 24, "total_tokens": 146}


@responses.activate
def test_completions_stream_with_usage(client):
    answer_with("generate_stream.ndjson", "/api/generate")
    reply = client.post("/v1/completions", json={"model": MODEL, "prompt": "The sky is", "stream": True,
                                                  "stream_options": {"include_usage": True}})
    chunks = events_of(reply.data)[:-1]
    assert [c["choices"][0]["text"] for c in chunks[:3]] == [" blue", " because", " of"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


@responses.activate
def test_error_line_mid_stream_ends_with_error_event(client):
    got = chat_stream(client, "stream_error.ndjson")
    assert got[0]["choices"][0]["delta"]["content"] == "The"
    assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "upstream_stream_error"
    assert "unexpected EOF" in got[-2]["error"]["message"]


@responses.activate
def test_a_line_over_the_event_bound_ends_the_stream_with_an_error_event(make_app):
    # An upstream that never ends its line must not make the gateway buffer without end.
    client = make_app(UPSTREAM_KIND="ollama", MODEL=MODEL, MAX_SSE_EVENT_BYTES=4096).test_client()
    responses.post(UPSTREAM + "/api/chat", body=b'{"message": "' + b"a" * 100_000,
                   content_type="application/x-ndjson")
    got = events_of(client.post("/v1/chat/completions", json={
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Capital of France?"}]}).data)
    assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "upstream_event_too_large"
    assert "MAX_SSE_EVENT_BYTES" in got[-2]["error"]["message"]


def test_ndjson_lines_are_bounded_however_they_arrive():
    lines = NDJSONLines(max_line_bytes=8)
    assert lines.feed(b"12345678\n1234") == [b"12345678"]
    assert lines.feed(b"5678\n\n") == [b"12345678", b""]
    assert lines.feed(b"123") == [] and lines.rest() == b"123"
    with pytest.raises(EventTooLarge):
        lines.feed(b"456789")  # unfinished, and already past the bound
    with pytest.raises(EventTooLarge):
        NDJSONLines(max_line_bytes=8).feed(b"123456789\nok\n")  # finished, but too long


@responses.activate
def test_unknown_model_is_404_with_ollamas_message(client):
    responses.post(UPSTREAM + "/api/chat", body=recorded("model_not_found.json"), status=404,
                   content_type="application/json; charset=utf-8")
    reply = client.post("/v1/chat/completions",
                        json={"model": "llama9", "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 404
    assert reply.json["error"]["message"] == 'model "llama9" not found, try pulling it first'


@responses.activate
def test_models_and_readiness(make_app):
    responses.get(UPSTREAM + "/api/tags", body=recorded("tags.json"), content_type="application/json")
    responses.get(UPSTREAM + "/api/version", body=recorded("version.json"), content_type="application/json")
    client = make_app(UPSTREAM_KIND="ollama", MODEL="").test_client()
    listing = client.get("/v1/models").json
    assert [m["id"] for m in listing["data"]] == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert listing["data"][0]["owned_by"] == "ollama"
    assert client.get("/readyz").status_code == 200


def test_request_translation_of_images_history_and_formats():
    path, body = ollama_request(CHAT, {
        "model": MODEL, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"zoom": 2}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}]})
    assert path == "/api/chat" and body["format"] == {"type": "object"}
    assert body["messages"] == [
        {"role": "user", "content": "What is this?", "images": ["iVBOR"]},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "look", "arguments": {"zoom": 2}}}]},
        {"role": "tool", "content": "a cat"}]
    body = {"model": MODEL, "prompt": ["one"], "response_format": {"type": "json_object"}}
    expected = {"model": MODEL, "stream": False, "prompt": "one", "raw": True, "format": "json"}
    assert ollama_request(COMPLETIONS, body)[1] == expected


@pytest.mark.parametrize("path, payload, param", [
    (COMPLETIONS, {"prompt": "x", "n": 2}, "n"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 2}, "logprobs"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
    (CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, "messages"),
])
def test_what_ollama_cannot_do_is_a_400_naming_the_field(path, payload, param):
    with pytest.raises(InvalidRequest) as caught:
        ollama_request(path, {"model": MODEL, **payload})
    assert caught.value.param == param and caught.value.code == "unsupported_by_upstream"


class Pieces:
    """A stand-in for requests' response whose body arrives in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def iter_content(self, chunk_size=None):
        yield from self.pieces


STREAM = recorded("chat_stream.ndjson")


def translated(pieces: list[bytes]) -> list:
    answer = Answer(CHAT, MODEL, "r", include_usage=True, created=1)
    return events_of(b"".join(OllamaResponse(Pieces(pieces), answer).iter_content()))  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", range(1, len(STREAM), 37))
def test_lines_split_anywhere_translate_the_same(cut):
    assert translated([STREAM[:cut], STREAM[cut:]]) == translated([STREAM])


def test_last_line_without_newline_is_read():
    assert translated([STREAM.rstrip(b"\n")]) == translated([STREAM])


def test_make_client_kinds():
    assert set(SETTINGS_BY_NAME["UPSTREAM_KIND"].choices) == set(CLIENT_KINDS)
    settings = {"connect_timeout": 1, "read_timeout": 1, "health_timeout": 1, "pool_size": 1}
    assert make_client("ollama", UPSTREAM, **settings).health_path == "/api/version"
    assert make_client("openai", UPSTREAM, **settings).health_path == "/v1/models"
    assert make_client("vllm", UPSTREAM, **settings).health_path == "/health"
    with pytest.raises(ValueError, match="unknown upstream kind"):
        make_client("tgi", UPSTREAM, **settings)
