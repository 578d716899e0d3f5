"""The client to an Ollama server, with the same interface as UpstreamClient.

It takes the OpenAI-shaped requests every surface sends (/v1/completions, /v1/chat/completions,
/v1/models) and answers in OpenAI's shapes, so the gateway's one path needs no branch for
Ollama; the translation itself is in ollama_wire.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from app.upstream.client import JSON_TYPE, UpstreamClient
from app.upstream.http import Response
from app.upstream.ollama_wire import Answer, models_from_tags, ollama_request

NDJSON_TYPE = "application/x-ndjson"


class OllamaResponse:
    """An open Ollama response seen as an OpenAI one: iter_content gives SSE bytes, json() the body."""

    def __init__(self, response: Response, answer: Answer) -> None:
        self._response = response
        self._answer = answer

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """OpenAI SSE events for each NDJSON line, as the lines arrive (lines may span chunks)."""
        pending = b""
        for chunk in self._response.iter_content(chunk_size=None):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(self._answer.events(line) for line in lines if line.strip())
            if out:
                yield out
        if pending.strip():  # a last line without its newline
            yield self._answer.events(pending)

    @property
    def headers(self) -> Any:
        """The Ollama response's headers (the gateway checks a blocking answer's Content-Length)."""
        return self._response.headers

    def json(self) -> dict[str, Any]:
        """The OpenAI body for a non-streamed answer."""
        return self._answer.whole(self._response.json())

    def close(self) -> None:
        self._response.close()


class OllamaClient(UpstreamClient):
    """Talks to Ollama's native /api/generate, /api/chat and /api/tags; readiness from /api/version."""

    health_path = "/api/version"

    def open(self, path: str, payload: dict[str, Any], *, request_id: str | None,  # type: ignore[override]
             stream: bool) -> OllamaResponse:
        """POST the translated request; return its answer in OpenAI's shapes. The caller closes it."""
        ollama_path, body = ollama_request(path, payload)
        answer = Answer(path, payload["model"], request_id or uuid.uuid4().hex, include_usage=_wants_usage(payload))
        response = self.post(ollama_path, body, request_id=request_id,
                             expected_type=NDJSON_TYPE if stream else JSON_TYPE)
        return OllamaResponse(response, answer)

    def get_json(self, path: str) -> Any:
        """The model list (the only document the gateway reads this way), from /api/tags."""
        if path != "/v1/models":
            raise ValueError(f"Ollama has no equivalent of {path}")
        return models_from_tags(super().get_json("/api/tags"))


def _wants_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
