"""The path of one generation through the gateway, shared by every API surface.

`complete` (blocking) and `stream` (SSE) open the upstream, relay or read its answer, and
close the generation's Exchange with its outcome, whatever happens.
"""
from __future__ import annotations

from contextlib import closing
from typing import Any

from flask import Response, g, request

from app.disconnect import ClientDisconnected, cancel_on_disconnect
from app.errors import ApiError
from app.exchange import CLIENT_CANCELLED, COMPLETED, UPSTREAM_ERROR, Exchange
from app.request_id import current_request_id
from app.streaming import CLIENT_CLOSED_STATUS, EventTransform, relay_response
from app.upstream import get_upstream


def new_exchange(payload: dict[str, Any], replica: str) -> Exchange:
    """The record of the generation this request asks for, kept on `g` for the after-request hooks."""
    rule = request.url_rule.rule if request.url_rule else request.path
    # key_name: set on `g` by access control; None for an anonymous request.
    g.exchange = Exchange(request_id=current_request_id(), route=rule, model=payload["model"],
                          stream=bool(payload.get("stream")), key_name=g.get("key_name"), replica=replica)
    return g.exchange


def complete(path: str, payload: dict[str, Any]) -> Any:
    """Send a blocking request upstream and return its JSON body."""
    upstream = get_upstream()
    exchange = new_exchange(payload, upstream.base_url)
    try:
        with cancel_on_disconnect(request.environ), exchange.waiting_upstream():
            with closing(upstream.open(path, payload, request_id=exchange.request_id, stream=False)) as response:
                result = upstream.read_json(response)
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
    upstream = get_upstream()
    exchange = new_exchange(payload, upstream.base_url)
    try:
        with cancel_on_disconnect(request.environ), exchange.waiting_upstream():
            response = upstream.open(path, payload, request_id=exchange.request_id, stream=True)
    except ClientDisconnected:
        exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS)
        raise
    except ApiError as exc:
        exchange.finish(UPSTREAM_ERROR, exc.status, exc.code)
        raise
    return relay_response(response, request.environ, transform, exchange)
