"""The path of one generation through the gateway, shared by every API surface.

`complete` (blocking) and `stream` (SSE) open the upstream on the best replica (failing over
to others before the client has received anything), relay or read its answer, and close the
generation's Exchange with its outcome, whatever happens.
"""
from __future__ import annotations

from contextlib import closing
from typing import Any

from flask import Response, request

from app.disconnect import ClientDisconnected, cancel_on_disconnect
from app.errors import ApiError
from app.exchange import CLIENT_CANCELLED, COMPLETED, UPSTREAM_ERROR, Exchange
from app.request_id import current_request_id
from app.streaming import CLIENT_CLOSED_STATUS, EventTransform, relay_response
from app.upstream import get_upstream
from app.upstream.pool import Lease
from app.upstream.routing import SESSION_HEADER


def new_exchange(payload: dict[str, Any]) -> Exchange:
    """The record of the generation this request asks for."""
    rule = request.url_rule.rule if request.url_rule else request.path
    return Exchange(request_id=current_request_id(), route=rule, model=payload["model"],
                    stream=bool(payload.get("stream")))


def open_upstream(path: str, payload: dict[str, Any], exchange: Exchange, *, stream: bool) -> Lease:
    """Open the generation on the replica the routing strategy picks (sets exchange.replica)."""
    return get_upstream().open_with_failover(path, payload, exchange, stream=stream,
                                             session_id=request.headers.get(SESSION_HEADER))


def complete(path: str, payload: dict[str, Any]) -> Any:
    """Send a blocking request upstream and return its JSON body."""
    exchange = new_exchange(payload)
    try:
        with cancel_on_disconnect(request.environ):
            with closing(open_upstream(path, payload, exchange, stream=False)) as lease:
                result = lease.read_json()
    except ClientDisconnected:
        exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS)
        raise
    except ApiError as exc:
        exchange.finish(UPSTREAM_ERROR, exc.status, exc.code)
        raise
    exchange.record_usage(result.get("usage") if isinstance(result, dict) else None)
    exchange.finish(COMPLETED)
    return result


def stream(path: str, payload: dict[str, Any], transform: EventTransform) -> Response:
    """Open a streaming request upstream and return the SSE response that relays it."""
    exchange = new_exchange(payload)
    try:
        with cancel_on_disconnect(request.environ):
            lease = open_upstream(path, payload, exchange, stream=True)
    except ClientDisconnected:
        exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS)
        raise
    except ApiError as exc:
        exchange.finish(UPSTREAM_ERROR, exc.status, exc.code)
        raise
    return relay_response(lease, request.environ, transform, exchange)
