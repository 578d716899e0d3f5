"""The native generation API: /v1/generate (blocking) and /v1/generate/stream (SSE).

Both translate to the upstream's /v1/completions; the view functions read as the request's
path: validate (by the decorator), open the upstream, relay or translate.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Response
from flask.views import MethodView

from app import gateway
from app.api.docs import GENERATION_HEADERS, error_responses, sse_response
from app.api.smorest import Blueprint
from app.errors import UpstreamBadResponse
from app.schemas import GenerateRequestSchema, GenerateResponseSchema
from app.upstream import errors as upstream_errors
from app.upstream import get_upstream
from app.upstream.models import resolve_model
from app.upstream.sse import sse_event

blp = Blueprint("generate", __name__, url_prefix="/v1", description="Native text generation API.")

_STREAM_DOC = sse_response(
    "Server-Sent Events: `data: {\"id\", \"text\", \"finish_reason\"}` per piece of text, a last event "
    "that also carries `usage`, then `data: [DONE]`. An error after the stream began comes as "
    "`data: {\"error\": {...}}` followed by `data: [DONE]`.",
    "StreamEvent",
    'data: {"id": "cmpl-1", "text": " Paris", "finish_reason": null}\n\n'
    'data: {"id": "cmpl-1", "text": "", "finish_reason": "length", '
    '"usage": {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7}}\n\n'
    "data: [DONE]\n\n",
)
# Errors before the first byte; 422 is documented by @blp.arguments.
_ERRORS = error_responses(400, 413, 415, 502, 503, 504)
_PASSED_THROUGH = ("max_tokens", "temperature", "top_p", "stop", "seed")


def completion_request(body: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """The upstream /v1/completions request for a validated native request."""
    payload = {"model": model, "prompt": body["prompt"], "stream": stream}
    payload.update((key, body[key]) for key in _PASSED_THROUGH if key in body)
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


def native_response(completion: Any, client_model: str | None = None) -> dict[str, Any]:
    """The native response for an upstream completion, under the model name the client used; 502 when not one."""
    try:
        choice = completion["choices"][0]
        return {"id": completion["id"], "model": client_model or completion["model"], "text": choice["text"],
                "finish_reason": choice.get("finish_reason"), "usage": completion["usage"]}
    except (KeyError, IndexError, TypeError):
        raise UpstreamBadResponse("upstream sent a completion without id, text or usage",
                                  code="upstream_bad_body") from None


class NativeStreamTranslator:
    """Turns upstream completion chunks into native events; remembers the finish reason for the last."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None

    def __call__(self, data: bytes) -> bytes | None:
        event = self.event(data)
        return None if event is None else sse_event(json.dumps(event).encode())

    def event(self, data: bytes) -> dict[str, Any] | None:
        """The native event for one upstream chunk (None: nothing to tell); the last carries usage."""
        try:
            chunk = json.loads(data)
            if "error" in chunk:
                raise upstream_errors.from_event(chunk)
            event: dict[str, Any] = {"id": chunk["id"]}
            if chunk["choices"]:
                choice = chunk["choices"][0]
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
                event.update(text=choice["text"], finish_reason=choice.get("finish_reason"))
            if chunk.get("usage"):
                # The usage-only chunk vLLM sends last (include_usage): it closes the stream.
                event.update(text="", finish_reason=self.finish_reason, usage=chunk["usage"])
            elif not chunk["choices"]:
                return None
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamBadResponse("upstream sent an event that is not a completion chunk",
                                      code="upstream_bad_event") from None
        return event


@blp.route("/generate")
class Generate(MethodView):
    """Blocking generation."""

    @blp.arguments(GenerateRequestSchema())  # an instance: webargs would build one per request from a class
    @blp.response(200, GenerateResponseSchema, headers=GENERATION_HEADERS)
    @blp.doc(responses=_ERRORS)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Generate text and return it whole."""
        payload = completion_request(body, resolve_model(body.get("model"), get_upstream()), stream=False)
        return native_response(gateway.complete("/v1/completions", payload), body.get("model"))


@blp.route("/generate/stream")
class GenerateStream(MethodView):
    """Streaming generation."""

    @blp.arguments(GenerateRequestSchema())
    @blp.doc(responses={"200": _STREAM_DOC, **_ERRORS})
    def post(self, body: dict[str, Any]) -> Response:
        """Generate text and stream it as Server-Sent Events as the model produces it."""
        payload = completion_request(body, resolve_model(body.get("model"), get_upstream()), stream=True)
        return gateway.stream("/v1/completions", payload, NativeStreamTranslator())
