"""Translation between OpenAI's request and response shapes and Ollama's native API.

Requests for /v1/completions become /api/generate (raw, so the prompt is continued as
vLLM does, without the model's chat template) and /v1/chat/completions become /api/chat.
Answers come back as OpenAI's JSON, or as the SSE chunks vLLM streams, with usage taken
from Ollama's prompt_eval_count and eval_count. Pure functions: no HTTP here.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidRequest, UpstreamBadResponse
from app.upstream.sse import sse_event

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
_OLLAMA_PATHS = {COMPLETIONS: "/api/generate", CHAT: "/api/chat"}

# OpenAI / vLLM sampling fields -> Ollama's `options`.
_OPTIONS = {
    "max_tokens": "num_predict", "max_completion_tokens": "num_predict", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed", "stop": "stop",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repeat_penalty",
}
# Fields Ollama cannot honour; dropping them silently would change the answer.
_UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "logit_bias", "suffix")
_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role
_DATA_URL_MARK = ";base64,"
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _unsupported(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{message} (the upstream is Ollama).", param=param, code="unsupported_by_upstream")


def ollama_request(path: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The Ollama path and body for an OpenAI-shaped request to `path`."""
    for name in _UNSUPPORTED:
        if payload.get(name):
            raise _unsupported(f"`{name}` is not supported", name)
    if payload.get("n", 1) != 1:
        raise _unsupported("Only n=1 is supported", "n")
    body: dict[str, Any] = {"model": payload["model"], "stream": bool(payload.get("stream"))}
    options = {_OPTIONS[key]: value for key, value in payload.items() if key in _OPTIONS and value is not None}
    if options:
        body["options"] = options
    output_format = _format(payload.get("response_format"))
    if output_format is not None:
        body["format"] = output_format
    if path == COMPLETIONS:
        body.update(prompt=_one_prompt(payload.get("prompt")), raw=True)
    else:
        body["messages"] = [_message(m) for m in payload["messages"]]
        if payload.get("tools"):
            body["tools"] = payload["tools"]  # Ollama takes OpenAI's tool format as it is
    return _OLLAMA_PATHS[path], body


def _one_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _unsupported("Only one text prompt per request is supported", "prompt")
    return prompt


def _format(response_format: Any) -> Any:
    """Ollama's `format`: "json", a JSON schema, or None for plain text."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or "json"
    return None


def _message(message: dict[str, Any]) -> dict[str, Any]:
    role = message["role"]
    out: dict[str, Any] = {"role": _ROLES.get(role, role)}
    content = message.get("content")
    if isinstance(content, list):
        texts, images = _parts(content)
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if message.get("tool_calls"):
        out["tool_calls"] = [_ollama_tool_call(call) for call in message["tool_calls"]]
    return out


def _parts(parts: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Text parts, and image parts as the base64 payloads Ollama takes."""
    texts, images = [], []
    for part in parts:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:") or _DATA_URL_MARK not in url:
                raise _unsupported("Images must be inline data: URLs", "messages")
            images.append(url.split(_DATA_URL_MARK, 1)[1])
        else:
            raise _unsupported(f"Content parts of type {part.get('type')!r} are not supported", "messages")
    return texts, images


def _ollama_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise _unsupported("Tool call arguments must be a JSON object", "messages") from None
    return {"function": {"name": function.get("name", ""), "arguments": parsed}}


def _openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": call["function"]["name"],
                          "arguments": json.dumps(call["function"].get("arguments") or {})}}
            for call in calls]


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    # Ollama leaves prompt_eval_count out when the whole prompt came from its cache.
    prompt, completion = int(answer.get("prompt_eval_count") or 0), int(answer.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(answer: dict[str, Any], tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if answer.get("done_reason") == "length" else "stop"


@dataclass
class Answer:
    """Turns Ollama's answers to one request into OpenAI's: a whole body, or SSE events as lines arrive."""

    path: str
    model: str
    request_id: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _sent_role: bool = False
    _tool_calls: int = 0  # tool calls streamed so far: the next one's index

    @property
    def chat(self) -> bool:
        return self.path == CHAT

    def _envelope(self, streaming: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if streaming else "chat.completion") if self.chat else "text_completion"
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.request_id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, answer: Any) -> dict[str, Any]:
        """The OpenAI body for Ollama's non-streamed answer."""
        try:
            if self.chat:
                message = answer["message"]
                calls = message.get("tool_calls") or []
                reply: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
                if calls:
                    reply["tool_calls"] = _openai_tool_calls(calls)
                choice = {"index": 0, "message": reply, "logprobs": None,
                          "finish_reason": _finish_reason(answer, bool(calls))}
            else:
                choice = {"index": 0, "text": answer["response"], "logprobs": None,
                          "finish_reason": _finish_reason(answer, False)}
            return {**self._envelope(False), "choices": [choice], "usage": _usage(answer)}
        except (KeyError, TypeError, AttributeError):
            raise UpstreamBadResponse("upstream Ollama sent an answer without its text",
                                      code="upstream_bad_body") from None

    def events(self, line: bytes) -> bytes:
        """The SSE bytes (possibly none) for one NDJSON line of Ollama's stream; [DONE] after the last."""
        try:
            answer = json.loads(line)
            if "error" in answer:
                error = {"error": {"message": str(answer["error"]), "type": "upstream_error", "code": 500}}
                return _sse(error)
            done = bool(answer.get("done"))
            choice = self._chat_choice(answer) if self.chat else {"index": 0, "text": answer["response"],
                                                                   "logprobs": None, "finish_reason": None}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UpstreamBadResponse("upstream Ollama sent a stream line that is not an answer",
                                      code="upstream_bad_event") from None
        out = b""
        if done or choice.get("text") or choice.get("delta"):
            if done:
                choice["finish_reason"] = _finish_reason(answer, self._tool_calls > 0)
            out += _sse({**self._envelope(True), "choices": [choice]})
        if done:
            if self.include_usage:
                out += _sse({**self._envelope(True), "choices": [], "usage": _usage(answer)})
            out += b"data: [DONE]\n\n"
        return out

    def _chat_choice(self, answer: dict[str, Any]) -> dict[str, Any]:
        message = answer.get("message") or {}
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            calls = _openai_tool_calls(message["tool_calls"])
            delta["tool_calls"] = [{"index": self._tool_calls + i, **call} for i, call in enumerate(calls)]
            self._tool_calls += len(calls)
        if delta and not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def _sse(obj: dict[str, Any]) -> bytes:
    return sse_event(_compact(obj).encode())


def models_from_tags(tags: Any) -> dict[str, Any]:
    """OpenAI's model list for Ollama's /api/tags."""
    try:
        models = tags["models"]
        return {"object": "list", "data": [{"id": m["name"], "object": "model", "created": 0, "owned_by": "ollama"}
                                           for m in models]}
    except (KeyError, TypeError):
        raise UpstreamBadResponse("upstream Ollama sent a model list without names",
                                  code="upstream_bad_body") from None
