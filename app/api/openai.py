"""The OpenAI-compatible API: /v1/completions, /v1/chat/completions and /v1/models.

Requests are validated, their model name mapped, and sent upstream as they are; answers
come back as the upstream wrote them. Streams relay each upstream chunk unchanged, except
for the model's name when the model map renames it and the usage chunk Sluice asked for
on the client's behalf (it always asks, so that token accounting sees every stream).
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask.views import MethodView

from app import gateway
from app.api.docs import GENERATION_HEADERS, error_responses
from app.api.smorest import Blueprint
from app.exchange import GENERATION
from app.schemas import ApiErrorSchema
from app.schemas_openai import ChatCompletionRequestSchema, CompletionRequestSchema, ModelListSchema
from app.upstream import errors as upstream_errors
from app.upstream import get_upstream
from app.upstream.models import listed_models, resolve_model
from app.upstream.sse import sse_event

blp = Blueprint("openai", __name__, url_prefix="/v1", description="OpenAI-compatible API (as vLLM serves it).")

_ERROR_EVENT = re.compile(rb'\s*\{\s*"error"\s*:')
_USAGE_ONLY = re.compile(rb'"choices":\s*\[\]')
# One 200 with both shapes: the request's `stream` field chooses between them.
_ANSWER_DOC = {
    "description": "Without `stream`: the completion as JSON, in OpenAI's shape. With `stream: true`: "
                   "Server-Sent Events, the upstream's chunks as they come, then `data: [DONE]`; an error "
                   "after the stream began comes as `data: {\"error\": {...}}` then `data: [DONE]`.",
    "headers": GENERATION_HEADERS,
    "content": {
        "application/json": {"schema": {"type": "object", "required": ["id", "object", "choices"]}},
        "text/event-stream": {"schema": {
            "type": "object", "required": ["data"], "description": "One event (OpenAPI 3.0 has `schema` "
            "describe one event of the stream).",
            "properties": {"data": {"type": "string", "description": "A chunk's JSON, or `[DONE]` last."}}}},
    },
}
_ERRORS = error_responses(400, 404, 413, 415, 502, 503, 504)


class ModelRename:
    """Puts the client's model name where the upstream wrote its own, in an event's raw JSON (first place)."""

    def __init__(self, upstream_model: str, client_model: str | None) -> None:
        self.needed = bool(client_model) and client_model != upstream_model
        self._pattern = re.compile(rb'("model":\s*)' + re.escape(json.dumps(upstream_model).encode()))
        self._client_name = json.dumps(client_model).encode()

    def __call__(self, data: bytes) -> bytes:
        if not self.needed:
            return data
        return self._pattern.sub(lambda found: found.group(1) + self._client_name, data, count=1)


class CompatibleStream:
    """Relays OpenAI-shaped chunks byte for byte; renames the model and drops an unasked-for usage chunk."""

    def __init__(self, upstream_model: str, client_model: str | None, client_wants_usage: bool) -> None:
        self._rename = ModelRename(upstream_model, client_model)
        self._drop_usage = not client_wants_usage

    def __call__(self, data: bytes) -> bytes | None:
        if _ERROR_EVENT.match(data):
            raise upstream_errors.from_event(_json_object(data))
        if self._drop_usage and _USAGE_ONLY.search(data):
            return None
        return sse_event(self._rename(data))


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"error": "malformed error event"}


def upstream_payload(body: dict[str, Any]) -> dict[str, Any]:
    """A validated body as it goes upstream: nulls left out (not given), the model under the upstream's name."""
    payload = {key: value for key, value in body.items() if value is not None}
    payload["model"] = resolve_model(body.get("model"), get_upstream())
    return payload


def blocking(path: str, body: dict[str, Any], *, work: str = GENERATION) -> Any:
    """Send a validated request upstream and return its JSON answer, under the model name the client used."""
    result = gateway.complete(path, upstream_payload(body), work=work)
    client_model = body.get("model")
    if client_model and isinstance(result, dict) and "model" in result:
        result["model"] = client_model
    return result


def generate(path: str, body: dict[str, Any]) -> Any:
    """Send a validated request upstream under the upstream's model name; answer under the client's."""
    if not body.get("stream"):
        return blocking(path, body)
    client_model = body.get("model")
    payload = upstream_payload(body)
    model = payload["model"]
    wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    payload["stream_options"] = {**payload.get("stream_options", {}), "include_usage": True}
    return gateway.stream(path, payload, CompatibleStream(model, client_model, wants_usage))


@blp.route("/completions")
class Completions(MethodView):
    """Text completions."""

    @blp.arguments(CompletionRequestSchema())  # an instance: webargs would build one per request from a class
    @blp.doc(responses={"200": _ANSWER_DOC, **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """Continue a prompt (OpenAI's and vLLM's /v1/completions)."""
        return generate("/v1/completions", body)


@blp.route("/chat/completions")
class ChatCompletions(MethodView):
    """Chat completions."""

    @blp.arguments(ChatCompletionRequestSchema())
    @blp.doc(responses={"200": _ANSWER_DOC, **_ERRORS})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """Answer a conversation (OpenAI's and vLLM's /v1/chat/completions)."""
        return generate("/v1/chat/completions", body)


@blp.route("/models")
@blp.response(200, ModelListSchema)
@blp.doc(responses=error_responses(503))
def models() -> dict[str, Any]:
    """The model names clients may use."""
    return listed_models(get_upstream())
