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
from app.upstream.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge

NDJSON_TYPE = "application/x-ndjson"


class NDJSONLines:
    """Feed it raw bytes as they arrive; it returns each line completed so far (without its newline).

    Linear in its input however many chunks a line spans (each chunk is appended once and searched
    once), and bounded: an unfinished line longer than `max_line_bytes` raises EventTooLarge, the
    relay's error for an upstream event over SLUICE_MAX_SSE_EVENT_BYTES (a line becomes one event).
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        searched = len(self._pending)  # what is already buffered holds no newline
        self._pending += chunk
        pending, lines, start = self._pending, [], 0
        while (end := pending.find(b"\n", searched)) != -1:
            if end - start > self.max_line_bytes:
                raise EventTooLarge(self.max_line_bytes)
            lines.append(bytes(pending[start:end]))
            start = searched = end + 1
        if start:
            del pending[:start]
        if len(pending) > self.max_line_bytes:
            raise EventTooLarge(self.max_line_bytes)
        return lines

    def rest(self) -> bytes:
        """What follows the last newline: a last line the upstream did not end."""
        return bytes(self._pending)


class OllamaResponse:
    """An open Ollama response seen as an OpenAI one: iter_content gives SSE bytes, json() the body."""

    def __init__(self, response: Response, answer: Answer, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._response = response
        self._answer = answer
        self._max_line_bytes = max_line_bytes

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """OpenAI SSE events for each NDJSON line, as the lines arrive (lines may span chunks)."""
        lines = NDJSONLines(self._max_line_bytes)
        for chunk in self._response.iter_content(chunk_size=None):
            out = b"".join(self._answer.events(line) for line in lines.feed(chunk) if line.strip())
            if out:
                yield out
        last = lines.rest()
        if last.strip():  # a last line without its newline
            yield self._answer.events(last)

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
        return OllamaResponse(response, answer, self.max_event_bytes)

    def get_json(self, path: str) -> Any:
        """The model list (the only document the gateway reads this way), from /api/tags."""
        if path != "/v1/models":
            raise ValueError(f"Ollama has no equivalent of {path}")
        return models_from_tags(super().get_json("/api/tags"))


def _wants_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
