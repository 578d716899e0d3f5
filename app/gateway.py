"""The path of one generation through the gateway, shared by every API surface.

`complete` (blocking) and `stream` (SSE) open the upstream on the best replica (failing over
to others before the client has received anything), relay or read its answer, and close the
generation's Exchange with its outcome, whatever happens. `open_stream` is the opening step
on its own, for surfaces that relay events themselves (the WebSocket).
"""
from __future__ import annotations

from contextlib import closing
from typing import Any

from flask import Response, current_app, g, request

from app.access import admission, replica_slots
from app.exchange import COMPLETED, GENERATION, REJECTED, Exchange, failures_recorded
from app.observe.request_id import current_request_id
from app.relay.disconnect import cancel_on_disconnect
from app.relay.streaming import EventTransform, StreamFormat, relay_response
from app.upstream import get_upstream
from app.upstream.pool import Lease
from app.upstream.routing import SESSION_HEADER


def new_exchange(payload: dict[str, Any], request_id: str | None = None, *, work: str = GENERATION) -> Exchange:
    """The record of the generation this request asks for, once admitted (else 429 or 503).

    Kept on `g` for the after-request hooks; `request_id` defaults to the request's (a
    WebSocket runs several generations per request). `work` says what token limits count.
    """
    rule = request.url_rule.rule if request.url_rule else request.path
    # key_name: set on `g` by access control; None for an anonymous request.
    g.exchange = exchange = Exchange(request_id=request_id or current_request_id(), route=rule,
                                     model=payload["model"], stream=bool(payload.get("stream")),
                                     key_name=g.get("key_name"), work=work)
    # The one admission call site. What it holds is given back when the exchange finishes,
    # so from here on every path must finish it (failures_recorded does, for any exception).
    with failures_recorded(exchange, outcome=REJECTED):
        admission.admit(exchange, payload)
        replica_slots.wait_turn(exchange, payload)  # with SLUICE_REPLICA_CAPACITY: a slot, in fair order
    return exchange


def open_upstream(path: str, payload: dict[str, Any], exchange: Exchange, *, stream: bool) -> Lease:
    """Open the generation on the replica the routing strategy picks (sets exchange.replica)."""
    return get_upstream().open_with_failover(path, payload, exchange, stream=stream,
                                             session_id=request.headers.get(SESSION_HEADER))


def complete(path: str, payload: dict[str, Any], *, work: str = GENERATION) -> Any:
    """Send a blocking request upstream and return its JSON body."""
    exchange = new_exchange(payload, work=work)
    with failures_recorded(exchange), cancel_on_disconnect(request.environ), exchange.waiting_upstream():
        with closing(open_upstream(path, payload, exchange, stream=False)) as lease:
            result = lease.read_json()  # at most SLUICE_MAX_UPSTREAM_BODY_BYTES, else a 502
    exchange.record_usage(result.get("usage") if isinstance(result, dict) else None)
    exchange.finish(COMPLETED)
    return result


def open_stream(path: str, payload: dict[str, Any], exchange: Exchange) -> Lease:
    """Open a streaming request upstream for `exchange`; a failure finishes the exchange and is raised."""
    with failures_recorded(exchange):
        return open_upstream(path, payload, exchange, stream=True)


def stream(path: str, payload: dict[str, Any], transform: EventTransform,
           stream_format: StreamFormat | None = None) -> Response:
    """Open a streaming request upstream and return the SSE response that relays it (as `stream_format` says)."""
    exchange = new_exchange(payload)
    with cancel_on_disconnect(request.environ), exchange.waiting_upstream():
        lease = open_stream(path, payload, exchange)
    return relay_response(lease, request.environ, transform, exchange, stream_format,
                          current_app.config["MAX_SSE_EVENT_BYTES"])
