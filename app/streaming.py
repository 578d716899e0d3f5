"""Relay an upstream SSE response to the client, event by event, as the upstream produces it.

Whatever goes wrong after the first byte is sent as an error event followed by [DONE]:
a stream never just stops. A client that leaves ends the relay and closes the upstream.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import requests
from flask import Response

from app.disconnect import ClientDisconnected, cancel_on_disconnect
from app.errors import ApiError, UpstreamBadResponse
from app.upstream import errors as upstream_errors
from app.upstream.sse import SSEParser

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Turns one upstream event's data into bytes for the client (None: send nothing).
EventTransform = Callable[[bytes], "bytes | None"]


def relay_response(upstream: requests.Response, environ: dict[str, Any], transform: EventTransform,
                   replica: str) -> Response:
    """A text/event-stream response relaying `upstream`, which the caller has opened.

    Opening happens before this, in the view, so that failures before the first byte are
    ordinary HTTP errors; from here on they are error events. gunicorn sends each yielded
    piece at once.
    """
    response = Response(relay(upstream, environ, transform, replica), mimetype="text/event-stream",
                        headers=SSE_HEADERS)
    # A generator that never started ignores close(): close the upstream here too.
    response.call_on_close(upstream.close)
    return response


def relay(response: requests.Response, environ: dict[str, Any], transform: EventTransform,
          replica: str) -> Iterator[bytes]:
    """Yield the client's SSE bytes for each upstream event; the upstream is closed when done."""
    try:
        with cancel_on_disconnect(environ):
            yield from _events(response, transform, replica)
    except ApiError as exc:
        yield exc.sse_event()
    except ClientDisconnected:
        log.info("client disconnected mid-stream; upstream request cancelled")
    finally:
        response.close()


def _events(response: requests.Response, transform: EventTransform, replica: str) -> Iterator[bytes]:
    parser = SSEParser()
    try:
        # chunk_size=None: each HTTP chunk as soon as it arrives, no read-ahead buffering.
        for chunk in response.iter_content(chunk_size=None):
            for data in parser.feed(chunk):
                if data == b"[DONE]":
                    yield DONE
                    return
                out = transform(data)
                if out:
                    yield out
    except requests.RequestException as exc:
        raise upstream_errors.from_exception(exc, replica) from None
    raise UpstreamBadResponse(f"upstream {replica} ended the stream without [DONE]", code="upstream_truncated")


def sse_event(payload: bytes) -> bytes:
    """Frame a JSON payload as one SSE event."""
    return b"data: " + payload + b"\n\n"
