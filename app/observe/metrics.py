"""Every Prometheus metric of the gateway, and the calls other modules make to record one.

Names start with `sluice_` and are in base units (seconds, tokens). Under gunicorn they are
kept in prometheus-client's multiprocess mode (gunicorn.conf.py sets the folder), so that
/metrics adds up every worker; see docs/observability.md for the whole table.

Label values stay few on purpose: routes are URL rules (never raw paths), key names are the
operator's key names (never keys), models only those the upstream accepted.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from flask import g, has_request_context, request
from prometheus_client import Counter, Gauge, Histogram

ANONYMOUS = "anonymous"
REJECTION_REASONS = ("auth", "rate", "tokens", "concurrency", "budget", "overload")

# Generations last seconds to minutes; the gateway's own share should be milliseconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
_QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

REQUESTS = Counter("sluice_requests_total", "HTTP requests answered, by route, method, status and key name.",
                   ["route", "method", "status", "key_name"])
REQUEST_DURATION = Histogram("sluice_request_duration_seconds",
                             "End-to-end time of a request, from its start to its response's last byte.",
                             ["route"], buckets=_LATENCY_BUCKETS)
GATEWAY_OVERHEAD = Histogram("sluice_gateway_overhead_seconds",
                             "Time of a generation request spent in the gateway, not waiting on the upstream, "
                             "up to the response headers.", ["route", "stream"], buckets=_OVERHEAD_BUCKETS)
GENERATIONS = Counter("sluice_generations_total", "Generations sent upstream, by how they ended.",
                      ["route", "model", "stream", "outcome", "key_name"])
TIME_TO_FIRST_TOKEN = Histogram("sluice_time_to_first_token_seconds",
                                "Streams: from sending the request upstream to its first token.",
                                ["route", "model"], buckets=_TTFT_BUCKETS)
TIME_BETWEEN_TOKENS = Histogram("sluice_time_between_tokens_seconds",
                                "Streams: time between two consecutive tokens from the upstream.",
                                ["route", "model"], buckets=_TOKEN_GAP_BUCKETS)
PROMPT_TOKENS = Counter("sluice_prompt_tokens_total", "Prompt tokens processed upstream.", ["model", "key_name"])
COMPLETION_TOKENS = Counter("sluice_completion_tokens_total", "Completion tokens generated upstream (streams cut "
                            "short count the tokens relayed).", ["model", "key_name"])
IN_FLIGHT = Gauge("sluice_generations_in_flight", "Generations sent upstream and not yet finished.",
                  multiprocess_mode="livesum")
WAITING = Gauge("sluice_requests_waiting", "Requests waiting for admission (a free generation slot).",
                multiprocess_mode="livesum")
QUEUE_WAITING = Gauge("sluice_queue_waiting_requests", "Requests waiting for replica capacity, by key name and "
                      "priority class.", ["key_name", "priority"], multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("sluice_queue_wait_seconds", "Time a generation waited for replica capacity (0 when it was "
                       "free), by priority class and outcome (admitted, timeout, full, left).", ["priority", "outcome"],
                       buckets=_QUEUE_BUCKETS)
QUEUE_ADMITTED = Counter("sluice_queue_admitted_total", "Generations given replica capacity, by key name.",
                         ["key_name"])
REJECTIONS = Counter("sluice_rejections_total", "Requests refused before reaching a model, by reason.",
                     ["reason", "route"])
UPSTREAM_ERRORS = Counter("sluice_upstream_errors_total", "Generations that failed upstream, by error kind "
                          "(the error code clients see) and replica.", ["kind", "replica"])
SHARED_STATE_ERRORS = Counter("sluice_shared_state_errors_total", "Redis operations that failed and were served by "
                              "the configured failure mode (SLUICE_REDIS_FAILURE_MODE).", ["operation"])
LEDGER_ROWS = Counter("sluice_ledger_rows_total", "Usage ledger rows, by what became of them: written to the "
                      "database, or dropped because the worker's buffer was full while the database was away.",
                      ["result"])
LEDGER_BUFFERED = Gauge("sluice_ledger_rows_buffered", "Usage ledger rows waiting in the workers' buffers.",
                        multiprocess_mode="livesum")
REPLICA_UP = Gauge("sluice_replica_up", "1 when the replica is in rotation (healthy or recovering), else 0.",
                   ["replica"], multiprocess_mode="mostrecent")
REPLICA_OUTSTANDING = Gauge("sluice_replica_outstanding_requests", "Requests the gateway has open on the replica.",
                            ["replica"], multiprocess_mode="livesum")
REPLICA_REQUESTS = Counter("sluice_replica_requests_total", "Requests sent to the replica (each failover try "
                           "counts).", ["replica"])
REPLICA_FAILURES = Counter("sluice_replica_failures_total", "Failures charged to the replica, by kind (the error "
                           "code), including those retried on another replica.", ["replica", "kind"])
REPLICA_RUNNING = Gauge("sluice_replica_running_requests", "vllm:num_requests_running as last read from the "
                        "replica's /metrics.", ["replica"], multiprocess_mode="mostrecent")
REPLICA_WAITING = Gauge("sluice_replica_waiting_requests", "vllm:num_requests_waiting as last read from the "
                        "replica's /metrics.", ["replica"], multiprocess_mode="mostrecent")
REPLICA_KV_CACHE = Gauge("sluice_replica_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc (0 to 1) as last read "
                         "from the replica's /metrics.", ["replica"], multiprocess_mode="mostrecent")


def key_label(key_name: str | None) -> str:
    """The key-name label: the name access control put on the request, else "anonymous"."""
    return key_name or ANONYMOUS


def route_label() -> str:
    """The current request's URL rule (bounded), or "unmatched" when no route matched."""
    if has_request_context() and request.url_rule is not None:
        return request.url_rule.rule
    return "unmatched"


def count_rejection(reason: str) -> None:
    """Count one request refused before reaching a model; reason is one of REJECTION_REASONS.

    Called by the module that refuses (auth, rate and token limits, admission). A 401 or 429
    that no module counted is counted by status when the response leaves (see instrument.py).
    """
    if reason not in REJECTION_REASONS:
        raise ValueError(f"unknown rejection reason {reason!r}; expected one of {REJECTION_REASONS}")
    REJECTIONS.labels(reason, route_label()).inc()
    if has_request_context():
        g.sluice_rejection_counted = True


@contextmanager
def waiting() -> Iterator[None]:
    """Count the current request as waiting for admission while inside this block."""
    WAITING.inc()
    try:
        yield
    finally:
        WAITING.dec()


@contextmanager
def queued(key_name: str | None, priority: str) -> Iterator[None]:
    """Count the current request as waiting for replica capacity while inside this block."""
    gauge = QUEUE_WAITING.labels(key_label(key_name), priority)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def set_replica_up(replica: str, up: bool) -> None:
    """Record the outcome of a replica's health check."""
    REPLICA_UP.labels(replica).set(1 if up else 0)


def observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """Observe many values in one pass: bucket counts are summed first, then written once per bucket.

    Histogram.observe() per value costs about 2 us in multiprocess mode (a file write each);
    a stream of thousands of tokens is observed at its end in a tenth of that. This uses the
    histogram's internals (pinned prometheus-client; tests compare it with observe()).
    """
    bounds = histogram._upper_bounds  # noqa: SLF001 - see docstring
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # first bucket whose bound is >= value, as observe()
        total += value
    for bucket, count in zip(histogram._buckets, counts, strict=True):  # noqa: SLF001
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)  # noqa: SLF001
