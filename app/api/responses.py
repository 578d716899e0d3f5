"""POST /v1/responses: OpenAI's Responses API as vLLM serves it, blocking or streamed.

The same path as chat: validated, admitted, routed to a replica of the model, failed over
before the first byte, cancelled when the client leaves. A stream relays vLLM's named events
(`event: response.created` ... `event: response.output_text.delta` ... `event:
response.completed`) with their names, as they come; the usage of the last one is what
token limits count.
"""
from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app import gateway
from app.api.docs import GENERATION_HEADERS, error_responses
from app.api.openai import ModelRename, blocking, upstream_payload
from app.api.smorest import Blueprint
from app.relay.named_events import ERROR_EVENT, NAMED_EVENTS, upstream_error
from app.schemas import ApiErrorSchema
from app.schemas_vllm import ResponsesRequestSchema
from app.upstream.sse import split_event

PATH = "/v1/responses"
blp = Blueprint("responses", __name__, url_prefix="/v1", description="OpenAI's Responses API (as vLLM serves it).")

_ANSWER_DOC = {
    "description": "Without `stream`: the response object (`output`, `usage` with `input_tokens` and "
                   "`output_tokens`). With `stream: true`: Server-Sent Events with names, relayed as vLLM sends "
                   "them: `event: response.created`, ... `event: response.output_text.delta` ..., and last "
                   "`event: response.completed` (no `[DONE]`). An error after the stream began comes as "
                   "`event: error` with `data: {\"type\": \"error\", \"code\", \"message\", \"error\": {...}}`.",
    "headers": GENERATION_HEADERS,
    "content": {
        "application/json": {"schema": {"type": "object", "required": ["id", "object", "output"]}},
        "text/event-stream": {"schema": {
            "type": "object", "required": ["event", "data"], "description": "One named event.",
            "properties": {"event": {"type": "string", "description": "e.g. `response.output_text.delta`."},
                           "data": {"type": "string", "description": "The event's JSON (its `type` is its name)."}}}},
    },
}


class ResponsesStream:
    """Relays named events unchanged but for the model's name; an upstream `error` event ends the stream as ours."""

    def __init__(self, upstream_model: str, client_model: str | None) -> None:
        self._rename = ModelRename(upstream_model, client_model)

    def __call__(self, event: bytes) -> bytes:
        name, data = split_event(event)
        if name == ERROR_EVENT:
            raise upstream_error(data)
        return self._rename(event)


@blp.route("/responses")
class Responses(MethodView):
    """Model responses."""

    @blp.arguments(ResponsesRequestSchema())  # an instance: webargs would build one per request from a class
    @blp.doc(responses={"200": _ANSWER_DOC, **error_responses(400, 404, 413, 415, 502, 503, 504)})
    @blp.alt_response(422, schema=ApiErrorSchema, description="Validation failed")
    def post(self, body: dict[str, Any]) -> Any:
        """Answer an input (OpenAI's and vLLM's /v1/responses), blocking or streamed."""
        if not body.get("stream"):
            return blocking(PATH, body)
        payload = upstream_payload(body)
        return gateway.stream(PATH, payload, ResponsesStream(payload["model"], body.get("model")), NAMED_EVENTS)
