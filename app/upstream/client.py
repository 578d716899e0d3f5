"""The HTTP client to one OpenAI-compatible model server (vLLM, or any server of OpenAI's API).

Every request (generations, health checks, model lists, metrics) goes through one urllib3
pool per upstream (app/upstream/http.py: a third of requests' CPU per call), made lazily in
the worker (after the fork: a pool inherited from the master would share sockets between
processes) and sized to the worker's connection limit, so that no connection is discarded
under load. A body read whole is at most SLUICE_MAX_UPSTREAM_BODY_BYTES.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.errors import UpstreamBadResponse
from app.upstream import errors
from app.upstream.http import DEFAULT_MAX_BODY_BYTES, TRANSPORT_ERRORS, Response, Transport
from app.upstream.sse import DEFAULT_MAX_EVENT_BYTES

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
TEXT_TYPE = "text/plain"


class UpstreamClient:
    """Sends OpenAI-compatible requests to one upstream and maps its failures to ApiErrors."""

    health_path = "/health"  # vLLM's; a 200 there means it can serve

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float,
                 health_timeout: float, pool_size: int, api_key: str = "",
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.base_url = base_url.rstrip("/")
        # The most of one stream event a response may hold unfinished. The relay's SSE parser keeps
        # vLLM's events to the same bound itself; a client that translates a stream (Ollama's NDJSON
        # lines) keeps what it buffers to it.
        self.max_event_bytes = max_event_bytes
        self.timeout = (connect_timeout, read_timeout)
        self.health_timeout = (connect_timeout, health_timeout)
        self.pool_size = pool_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.transport = Transport(self.base_url, pool_size=pool_size, headers=headers,
                                   max_body_bytes=max_body_bytes)

    def open(self, path: str, payload: dict[str, Any], *, request_id: str | None,
             stream: bool) -> Response:
        """POST JSON; return the open response once its headers say success. The caller closes it.

        Closing an unfinished response drops its connection: vLLM sees its client gone and
        aborts the generation, so no GPU time is spent on nobody.
        """
        return self.post(path, payload, request_id=request_id, expected_type=SSE_TYPE if stream else JSON_TYPE)

    def post(self, path: str, payload: dict[str, Any], *, request_id: str | None,
             expected_type: str) -> Response:
        """POST JSON and return the open response once its status and content type say success."""
        headers = {"X-Request-ID": request_id} if request_id else None
        try:
            response = self.transport.post_json(path, payload, headers, self.timeout)
        except TRANSPORT_ERRORS as exc:
            raise errors.from_exception(exc, self.base_url) from None
        try:
            self._check(response, expected_type)
        except TRANSPORT_ERRORS as exc:  # reading an error's body failed
            response.close()
            raise errors.from_exception(exc, self.base_url) from None
        except BaseException:
            response.close()
            raise
        return response

    def get_json(self, path: str) -> Any:
        """GET a small JSON document (model list)."""
        def read(response: Response) -> Any:
            self._check(response, JSON_TYPE)
            return self.read_json(response)
        return self._get(path, read)

    def get_text(self, path: str) -> str:
        """GET a small text document (Prometheus metrics)."""
        def read(response: Response) -> str:
            self._check(response, TEXT_TYPE)
            return response.text
        text: str = self._get(path, read)
        return text

    def check_health(self) -> None:
        """Raise the matching ApiError unless the upstream's health path answers 200."""
        def read(response: Response) -> None:
            if response.status_code != 200:
                raise errors.from_status(response.status_code, response.content, self.base_url)
        self._get(self.health_path, read)

    def _get(self, path: str, read: Callable[[Response], Any]) -> Any:
        """GET `path` within the health timeout and `read` the answer; transport faults mapped."""
        try:
            response = self.transport.get(path, self.health_timeout)
        except TRANSPORT_ERRORS as exc:
            raise errors.from_exception(exc, self.base_url) from None
        try:
            return read(response)
        except TRANSPORT_ERRORS as exc:
            raise errors.from_exception(exc, self.base_url) from None
        finally:
            response.close()

    def read_json(self, response: Response) -> Any:
        """The whole body of a JSON response, with transport faults mapped."""
        try:
            return response.json()
        except ValueError:
            raise UpstreamBadResponse(f"upstream {self.base_url} sent a body that is not JSON",
                                      code="upstream_bad_body") from None
        except TRANSPORT_ERRORS as exc:
            raise errors.from_exception(exc, self.base_url) from None

    def _check(self, response: Response, expected_type: str) -> None:
        if response.status_code >= 400:
            raise errors.from_status(response.status_code, response.content, self.base_url)
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith(expected_type):
            raise UpstreamBadResponse(
                f"upstream {self.base_url} answered {content_type or 'no content type'}, not {expected_type}:"
                " do SLUICE_UPSTREAM_URL and SLUICE_UPSTREAM_KIND name this server?", code="upstream_not_api")


class OpenAICompatibleClient(UpstreamClient):
    """Any other server of OpenAI's API (OpenAI itself, llama.cpp, TGI...): no /health, so /v1/models."""

    health_path = "/v1/models"
