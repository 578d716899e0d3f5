"""One exception tree, one status table and one JSON error shape for every error Sluice returns.

The shape is vLLM's and OpenAI's: {"error": {"message", "type", "param", "code"}}, so that
the same clients parse our errors and theirs. Streams carry the same object as an event.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from app.relay.disconnect import ClientDisconnected

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client sees: status, OpenAI-style type and code, and the offending parameter."""

    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error object, as sent in a response body or an SSE event."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def sse_event(self) -> bytes:
        """The error as the last event of a stream, followed by [DONE]: a stream never just stops."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\ndata: [DONE]\n\n"


class InvalidRequest(ApiError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(ApiError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(ApiError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(ApiError):
    status, type, code = 404, "not_found_error", "not_found"


class MethodNotAllowed(ApiError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(ApiError):
    status, type, code = 408, "invalid_request_error", "body_timeout"


class PayloadTooLarge(ApiError):
    status, type, code = 413, "invalid_request_error", "body_too_large"
    MESSAGE = "Request body is larger than the gateway accepts."


class UnsupportedMediaType(ApiError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class ValidationFailed(ApiError):
    status, type, code = 422, "invalid_request_error", "validation_error"


class RateLimited(ApiError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class UpstreamBadResponse(ApiError):
    """The upstream refused the connection, failed, or answered something that is not its API."""

    status, type, code = 502, "upstream_error", "upstream_error"


class Unavailable(ApiError):
    """No upstream is configured or ready, or the gateway is full."""

    status, type, code = 503, "service_unavailable", "unavailable"


class UpstreamTimeout(ApiError):
    status, type, code = 504, "upstream_timeout", "upstream_timeout"


# werkzeug raises these for routing and body problems before a view runs.
_HTTP_EXCEPTIONS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    429: RateLimited,
}


def internal_error() -> ApiError:
    """What a client is told about a bug of ours (logged with its traceback, never shown)."""
    return ApiError("Internal error in the gateway; it has been logged.")


def error_response(exc: ApiError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A Flask response tuple for an ApiError."""
    return exc.body(), exc.status, exc.headers


def _flatten(messages: Any, path: str = "") -> list[tuple[str, str]]:
    """(field path, message) pairs from marshmallow's nested error messages."""
    if isinstance(messages, dict):
        pairs = []
        for key, value in messages.items():
            name = "body" if key == "_schema" else str(key)
            pairs += _flatten(value, f"{path}.{name}" if path else name)
        return pairs
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [(path, " ".join(messages))]
    if isinstance(messages, list):
        return [pair for i, m in enumerate(messages) for pair in _flatten(m, f"{path}[{i}]")]
    return [(path, str(messages))]


# A body with thousands of unknown fields gets a short answer, not a megabyte of them.
MAX_LISTED_PROBLEMS = 10


def from_validation_messages(status: int, messages: dict[str, Any]) -> ApiError:
    """webargs' messages ({"json": {"field": ["rule"]}}) as one error naming each field and rule."""
    # The location ("json") says nothing to the client; the field names do.
    pairs = [pair for value in messages.values() for pair in _flatten(value)]
    if not pairs:
        return ValidationFailed("Request body is invalid.")
    rules = [(field, rule.rstrip(".")) for field, rule in pairs]
    text = "; ".join(f"{field}: {rule}" if field else rule for field, rule in rules[:MAX_LISTED_PROBLEMS])
    if len(rules) > MAX_LISTED_PROBLEMS:
        text += f"; and {len(rules) - MAX_LISTED_PROBLEMS} more problems"
    text += "."
    param = pairs[0][0] or None
    if status == 400:  # webargs' 400 is "Invalid JSON body."
        return InvalidRequest(text, code="invalid_json")
    return ValidationFailed(text, param=param)


def from_http_exception(exc: HTTPException) -> ApiError:
    """Translate werkzeug's HTTP exceptions (404 route, 405 method, 413 body...) into our tree."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict) and isinstance(data.get("messages"), dict):
        return from_validation_messages(exc.code or 422, data["messages"])
    cls = _HTTP_EXCEPTIONS.get(exc.code or 500)
    if cls is None:
        error = ApiError(exc.description or exc.name)
        error.status = exc.code or 500
        return error
    if exc.code == 404:
        return cls("No route for this URL; see /docs for the API.")
    if exc.code == 413:
        return cls(PayloadTooLarge.MESSAGE)
    return cls(exc.description or exc.name)


def register(app: Flask) -> None:
    """Make every error the app can raise come out in the one JSON shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> ResponseReturnValue:
        return error_response(exc)

    @app.errorhandler(ClientDisconnected)
    def _client_gone(exc: ClientDisconnected) -> ResponseReturnValue:
        # Nobody is left to read this; 499 is nginx's convention for it in access logs.
        return "", 499

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        error = from_http_exception(exc)
        headers = dict(error.headers)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return error.body(), error.status, headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        # A bug of ours: logged with its traceback, never shown to the client.
        log.exception("unhandled error")
        return internal_error().body(), 500
