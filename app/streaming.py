"""Relay an upstream SSE response to the client, event by event, as the upstream produces it.

Whatever goes wrong after the first byte is sent as an error event followed by [DONE]:
a stream never just stops. A client that leaves ends the relay and closes the upstream.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator

import requests
from flask import Response

from app.disconnect import ClientDisconnected, cancel_on_disconnect
from app.errors import ApiError, UpstreamBadResponse
from app.exchange import CLIENT_CANCELLED, COMPLETED, UPSTREAM_ERROR, Exchange
from app.upstream import errors as upstream_errors
from app.upstream.sse import SSEParser

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_CLOSED_STATUS = 499  # nginx's code for "client closed the request"

# Turns one upstream event's data into bytes for the client (None: send nothing).
EventTransform = Callable[[bytes], "bytes | None"]


def sse_event(payload: bytes) -> bytes:
    """Frame a JSON payload as one SSE event."""
    return b"data: " + payload + b"\n\n"


def relay_response(upstream: requests.Response, environ: dict[str, Any], transform: EventTransform,
                   exchange: Exchange) -> Response:
    """A text/event-stream response relaying `upstream`, which the caller has opened.

    Opening happens before this, in the view, so that failures before the first byte are
    ordinary HTTP errors; from here on they are error events. gunicorn sends each yielded
    piece at once.
    """
    response = Response(relay(upstream, environ, transform, exchange), mimetype="text/event-stream",
                        headers=SSE_HEADERS)
    # A generator that never started ignores close(): close the upstream here too.
    response.call_on_close(upstream.close)
    response.call_on_close(lambda: exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS))
    return response


def relay(response: requests.Response, environ: dict[str, Any], transform: EventTransform,
          exchange: Exchange) -> Iterator[bytes]:
    """Yield the client's SSE bytes for each upstream event; the upstream is closed when done."""
    try:
        with cancel_on_disconnect(environ) as guard:
            for piece in _events(response, transform, exchange):
                with guard.writing_to_client():
                    yield piece
        exchange.finish(COMPLETED)
    except ApiError as exc:
        exchange.finish(UPSTREAM_ERROR, exc.status, exc.code)
        yield exc.sse_event()
    except ClientDisconnected:
        exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS)
    except GeneratorExit:  # gunicorn stopped iterating: a write to the client failed
        exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS)
        raise
    finally:
        response.close()


def _events(response: requests.Response, transform: EventTransform, exchange: Exchange) -> Iterator[bytes]:
    replica = exchange.replica or "upstream"
    parser = SSEParser()
    try:
        # chunk_size=None: each HTTP chunk as soon as it arrives, no read-ahead buffering.
        for chunk in response.iter_content(chunk_size=None):
            for data in parser.feed(chunk):
                if data == b"[DONE]":
                    yield DONE
                    return
                if exchange.saw_event(data):
                    exchange.record_usage(_usage_of(data))
                out = transform(data)
                if out:
                    yield out
    except requests.RequestException as exc:
        raise upstream_errors.from_exception(exc, replica) from None
    raise UpstreamBadResponse(f"upstream {replica} ended the stream without [DONE]", code="upstream_truncated")


def _usage_of(data: bytes) -> Any:
    try:
        return json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return None  # the transform reports the malformed event
