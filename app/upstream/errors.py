"""Map what an upstream does wrong to the gateway's error tree (one table, one place)."""
from __future__ import annotations

import json
import re
from typing import Any

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from app.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    Unavailable,
    UpstreamBadResponse,
    UpstreamTimeout,
    ValidationFailed,
)
from app.upstream.http import BodyCut, BodyTooLarge

# Upstream statuses that are the client's fault are passed on with the upstream's message;
# the rest are the gateway's problem and become 502 or 503.
_CLIENT_FAULTS: dict[int, type[ApiError]] = {400: InvalidRequest, 404: NotFound, 422: ValidationFailed}
_OVERLOADED = (429, 503)
RETRY_AFTER_SECONDS = "1"
_UPSTREAM_4XX = re.compile(r"upstream_4\d\d")  # the code from_status gives other 4xx answers


def upstream_message(body: bytes) -> str | None:
    """The error message inside an upstream's error body (vLLM, OpenAI or FastAPI shapes)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return None


def from_status(status: int, body: bytes, replica: str) -> ApiError:
    """The error for an upstream response that is not a success."""
    message = upstream_message(body)
    if status in _CLIENT_FAULTS and message is not None:
        return _CLIENT_FAULTS[status](message, code=f"upstream_{status}")
    if status in _OVERLOADED:
        return Unavailable(f"upstream {replica} is overloaded ({status}); retry shortly.",
                           code="upstream_overloaded", headers={"Retry-After": RETRY_AFTER_SECONDS})
    detail = f": {message}" if message else ""
    return UpstreamBadResponse(f"upstream {replica} answered {status}{detail}", code=f"upstream_{status}")


def is_replica_fault(exc: ApiError) -> bool:
    """True when the replica failed (down, overloaded, broken, too slow), so another may succeed.

    False for the request's own faults (any 4xx the upstream found), which every replica would repeat.
    """
    if isinstance(exc, (Unavailable, UpstreamTimeout)):
        return True
    return isinstance(exc, UpstreamBadResponse) and not _UPSTREAM_4XX.fullmatch(exc.code)


def from_event(event: dict[str, Any]) -> ApiError:
    """The error for an in-band error event sent by the upstream mid-stream."""
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return UpstreamBadResponse(f"upstream failed during generation: {message or 'unknown error'}",
                               code="upstream_stream_error")


def from_exception(exc: Exception, replica: str) -> ApiError:
    """The error for a transport failure (urllib3's or the socket's; requests' when a relay reads a requests.Response):
    refused, reset, timed out, or garbled."""
    if isinstance(exc, requests.RequestException):
        return _from_requests(exc, replica)
    if isinstance(exc, BodyTooLarge):
        return UpstreamBadResponse(f"upstream {replica} answered more than the {exc.limit} bytes the gateway "
                                   "reads (setting MAX_UPSTREAM_BODY_BYTES)", code="upstream_body_too_large")
    if isinstance(exc, NewConnectionError):  # before its base class, ConnectTimeoutError
        if _is_refused(exc):
            return UpstreamBadResponse(f"upstream {replica} refused the connection", code="upstream_unreachable")
        return UpstreamBadResponse(f"upstream {replica} connection failed: {type(exc).__name__}",
                                   code="upstream_connection_error")
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return UpstreamTimeout(f"upstream {replica} did not answer in time", code="upstream_timeout")
    if isinstance(exc, ProtocolError) and "aborted" in str(exc):
        # Dropped after the request, before any response: nothing of a body was cut.
        return UpstreamBadResponse(f"upstream {replica} connection failed: ConnectionError",
                                   code="upstream_connection_error")
    if isinstance(exc, (BodyCut, ProtocolError, ConnectionError)):
        # The body broke off: a chunk cut short, or the connection closed or reset before its end.
        return UpstreamBadResponse(f"upstream {replica} closed the connection in the middle of a response",
                                   code="upstream_truncated")
    return UpstreamBadResponse(f"upstream {replica} connection failed: {type(exc).__name__}",
                               code="upstream_connection_error")


def _from_requests(exc: requests.RequestException, replica: str) -> ApiError:
    if isinstance(exc, (requests.ConnectTimeout, requests.ReadTimeout)):
        return UpstreamTimeout(f"upstream {replica} did not answer in time", code="upstream_timeout")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        # The body broke off: a chunk cut short, or the connection closed before its end.
        return UpstreamBadResponse(f"upstream {replica} closed the connection in the middle of a response",
                                   code="upstream_truncated")
    if isinstance(exc, requests.ConnectionError) and "Read timed out" in str(exc):
        # urllib3 reports a read timeout inside a streamed body as a ConnectionError.
        return UpstreamTimeout(f"upstream {replica} stopped sending in the middle of a response",
                               code="upstream_timeout")
    if isinstance(exc, requests.ConnectionError) and _is_refused(exc):
        return UpstreamBadResponse(f"upstream {replica} refused the connection", code="upstream_unreachable")
    return UpstreamBadResponse(f"upstream {replica} connection failed: {type(exc).__name__}",
                               code="upstream_connection_error")


def _is_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
