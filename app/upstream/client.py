"""The HTTP client to one OpenAI-compatible model server (vLLM, or any server of OpenAI's API).

Generations go through urllib3's pool directly (app/upstream/http.py: a third of requests'
CPU per call); health checks and model lists, a few per interval, through a requests
Session. Both are made lazily in the worker (after the fork: a pool inherited from the
master would share sockets between processes), and the generations' pool is sized to the
worker's connection limit so that no connection is discarded under load.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

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
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: requests.Session | None = None
        self._session_pid = 0
        self.transport = Transport(self.base_url, pool_size=pool_size, headers=self._headers,
                                   max_body_bytes=max_body_bytes)

    @property
    def session(self) -> requests.Session:
        """This process's pooled session for health checks and model lists (a new one after a fork)."""
        if self._session is None or self._session_pid != os.getpid():
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)  # one check at a time
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(self._headers)
            self._session, self._session_pid = session, os.getpid()
        return self._session

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
        return self._get(path, JSON_TYPE, self.read_json)

    def get_text(self, path: str) -> str:
        """GET a small text document (Prometheus metrics)."""
        text: str = self._get(path, TEXT_TYPE, lambda response: response.text)
        return text

    def _get(self, path: str, expected_type: str, read: Callable[[requests.Response], Any]) -> Any:
        try:
            with self.session.get(self.base_url + path, timeout=self.health_timeout) as response:
                self._check(response, expected_type)
                return read(response)
        except requests.RequestException as exc:
            raise errors.from_exception(exc, self.base_url) from None

    def check_health(self) -> None:
        """Raise the matching ApiError unless the upstream's health path answers 200."""
        try:
            with self.session.get(self.base_url + self.health_path, timeout=self.health_timeout) as response:
                if response.status_code != 200:
                    raise errors.from_status(response.status_code, response.content, self.base_url)
        except requests.RequestException as exc:
            raise errors.from_exception(exc, self.base_url) from None

    def read_json(self, response: Response | requests.Response) -> Any:
        """The whole body of a JSON response, with transport faults mapped."""
        try:
            return response.json()
        except ValueError:  # json's and requests' JSONDecodeError alike
            raise UpstreamBadResponse(f"upstream {self.base_url} sent a body that is not JSON",
                                      code="upstream_bad_body") from None
        except (requests.RequestException, *TRANSPORT_ERRORS) as exc:
            raise errors.from_exception(exc, self.base_url) from None

    def _check(self, response: Response | requests.Response, expected_type: str) -> None:
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
