"""Feed the metrics: Flask hooks for every request, the Exchange signals for every generation.

The request path knows nothing of this module. A request's start is taken from Flask's
`request_started` signal; its end is when the response is closed (for a stream, after the
last event). A generation's numbers come from its Exchange when it finishes.
"""
from __future__ import annotations

import time

from flask import Flask, Response, g, request, request_started

from app import exchange as exchanges
from app.access import shared_state
from app.exchange import REJECTED, UPSTREAM_ERROR, Exchange
from app.observe import metrics
from app.upstream import replicas
from app.upstream.replicas import Replica

OVERHEAD_HEADER = "X-Sluice-Overhead-Ms"
# Statuses that are refusals even when the module that refused did not count them.
_REJECTION_BY_STATUS = {401: "auth", 429: "rate"}
# Admission's refusals (app/access/admission.py), by error code.
_REJECTION_BY_CODE = {"token_limit_exceeded": "tokens", "concurrency_limit_exceeded": "concurrency",
                      "budget_exceeded": "budget",
                      "gateway_full": "overload", "gateway_busy": "overload"}
# An upstream that passes on a client fault (unknown model, prompt too long) names a model it
# does not serve: such names are not used as label values.
_CLIENT_FAULT_STATUSES = frozenset((400, 404, 413, 422))
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def init_app(app: Flask) -> None:
    """Record every request and every generation of this app."""
    request_started.connect(_mark_start, app)
    app.after_request(_record_response)
    exchanges.opened.connect(_generation_opened)
    exchanges.finished.connect(_generation_finished)
    shared_state.degraded.connect(_shared_state_failed)
    replicas.observed.connect(_replica_observed)
    replicas.request_started.connect(_replica_request_started)
    replicas.request_ended.connect(_replica_request_ended)
    replicas.failed.connect(_replica_failed)


def _mark_start(sender: Flask, **extra: object) -> None:
    g.sluice_started = time.perf_counter()


def _record_response(response: Response) -> Response:
    """Count the request, report the overhead of its generation, and time it to its last byte."""
    route = metrics.route_label()
    method = request.method if request.method in _METHODS else "other"
    metrics.REQUESTS.labels(route, method, str(response.status_code), metrics.key_label(g.get("key_name"))).inc()
    reason = _REJECTION_BY_STATUS.get(response.status_code)
    if reason and not g.get("sluice_rejection_counted"):
        metrics.count_rejection(reason)
    started: float = g.sluice_started
    exchange: Exchange | None = g.get("exchange")
    if exchange is not None:
        # For a stream this is the overhead up to its first byte: the relay runs later.
        overhead = time.perf_counter() - started - exchange.upstream_seconds
        response.headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
        metrics.GATEWAY_OVERHEAD.labels(route, _flag(exchange.stream)).observe(overhead)
    duration = metrics.REQUEST_DURATION.labels(route)
    response.call_on_close(lambda: duration.observe(time.perf_counter() - started))
    return response


def _replica_observed(replica: Replica) -> None:
    metrics.REPLICA_UP.labels(replica.url).set(1 if replica.serving() else 0)
    if replica.load is not None:
        metrics.REPLICA_RUNNING.labels(replica.url).set(replica.load.running)
        metrics.REPLICA_WAITING.labels(replica.url).set(replica.load.waiting)
        metrics.REPLICA_KV_CACHE.labels(replica.url).set(replica.load.kv_cache_usage)


def _replica_request_started(replica: Replica) -> None:
    metrics.REPLICA_REQUESTS.labels(replica.url).inc()
    metrics.REPLICA_OUTSTANDING.labels(replica.url).inc()


def _replica_request_ended(replica: Replica) -> None:
    metrics.REPLICA_OUTSTANDING.labels(replica.url).dec()


def _replica_failed(replica: Replica, code: str = "unknown") -> None:
    metrics.REPLICA_FAILURES.labels(replica.url, code).inc()


def _shared_state_failed(sender: object, operation: str = "unknown", **extra: object) -> None:
    metrics.SHARED_STATE_ERRORS.labels(operation).inc()


def _generation_opened(exchange: Exchange) -> None:
    metrics.IN_FLIGHT.inc()


def _generation_finished(exchange: Exchange) -> None:
    """Everything a finished generation tells: outcome, tokens, token timing, upstream errors."""
    metrics.IN_FLIGHT.dec()
    model = model_label(exchange)
    key = metrics.key_label(exchange.key_name)
    metrics.GENERATIONS.labels(exchange.route, model, _flag(exchange.stream), exchange.outcome or "unknown",
                               key).inc()
    if exchange.prompt_tokens:
        metrics.PROMPT_TOKENS.labels(model, key).inc(exchange.prompt_tokens)
    if exchange.completion_tokens:
        metrics.COMPLETION_TOKENS.labels(model, key).inc(exchange.completion_tokens)
    ttft = exchange.ttft_seconds
    if ttft is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(exchange.route, model).observe(ttft)
        metrics.observe_all(metrics.TIME_BETWEEN_TOKENS.labels(exchange.route, model), exchange.token_gaps())
    if exchange.outcome == REJECTED:
        metrics.count_rejection(_REJECTION_BY_CODE.get(exchange.error_code or "", "overload"))
    if exchange.outcome == UPSTREAM_ERROR:
        metrics.UPSTREAM_ERRORS.labels(exchange.error_code or "unknown", exchange.replica or "unknown").inc()
        if exchange.error_code == "upstream_overloaded":
            metrics.count_rejection("overload")


def model_label(exchange: Exchange) -> str:
    """The model as a label value: "invalid" when the upstream refused the request as the client's fault."""
    if exchange.outcome == UPSTREAM_ERROR and exchange.status in _CLIENT_FAULT_STATUSES:
        return "invalid"
    return exchange.model


def _flag(value: bool) -> str:
    return "true" if value else "false"

