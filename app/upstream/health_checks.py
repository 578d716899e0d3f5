"""Active health checks: each worker probes every replica in the background, after the fork.

One greenlet per replica per worker, every SLUICE_HEALTH_INTERVAL: is it alive (a failure
ejects it; after the cooldown a pass lets it return), which models it serves (when not
configured, and again when it returns, since it may have been restarted with others), and,
for vLLM, its load from /metrics. Started by the worker's first request, never at import:
greenlets and connections made in the gunicorn master would not survive the fork.
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence

import gevent
from gevent import monkey
from gevent.event import Event

from app.errors import ApiError, UpstreamBadResponse
from app.upstream import capabilities
from app.upstream.load import parse_vllm_metrics
from app.upstream.replicas import EJECTED, Client, Replica, observed

log = logging.getLogger(__name__)

JITTER = 0.2  # ±20 % on each interval, so that workers do not probe in step
ROUTES_RETRY = 30.0  # seconds before a replica whose routes could not be read is asked again


# Kinds whose /metrics carry vLLM's load gauges.
SCRAPED_KINDS = frozenset(("vllm",))


def served_models(client: Client) -> tuple[str, ...]:
    """The model names in a replica's /v1/models."""
    listing = client.get_json("/v1/models")
    try:
        models = tuple(str(entry["id"]) for entry in listing["data"])
    except (KeyError, TypeError):
        raise UpstreamBadResponse(f"upstream {client.base_url} sent a model list without data[].id",
                                  code="upstream_bad_body") from None
    if not models:
        raise UpstreamBadResponse(f"upstream {client.base_url} serves no model", code="no_model")
    return models


def discover_models(replica: Replica) -> None:
    """Ask the replica which models it serves; on failure keep what was known."""
    try:
        replica.models = served_models(replica.client)
    except ApiError as exc:
        log.warning("cannot list the models of %s: %s", replica.url, exc.message)


def discover_routes(replica: Replica) -> None:
    """Read which routes a vLLM replica serves (its runner decides: generation or pooling).

    On failure they stay as they were (unknown: every route is tried), and are asked again
    only after ROUTES_RETRY seconds: a replica without its OpenAPI document is not asked
    every second.
    """
    try:
        replica.routes = capabilities.served_routes(replica.client)
    except ApiError as exc:
        replica.routes_retry_at = time.monotonic() + ROUTES_RETRY
        log.warning("cannot list the routes of %s (asked again in %g s): %s", replica.url, ROUTES_RETRY,
                    exc.message)


def _routes_due(replica: Replica, returning: bool) -> bool:
    if replica.kind not in capabilities.DISCOVERED_KINDS:
        return False
    # Again on return: it may have been restarted with another model.
    return returning or (replica.routes is None and time.monotonic() >= replica.routes_retry_at)


def probe(replica: Replica) -> None:
    """One active check of a replica: alive, then its models if needed, then its load."""
    returning = replica.state == EJECTED
    try:
        replica.client.check_health()  # each kind's client knows its own liveness path
    except ApiError as exc:
        replica.health_failed(exc.message)
        observed.send(replica)
        return
    replica.health_passed()
    if not replica.models_configured and (replica.models is None or (returning and replica.serving())):
        discover_models(replica)
    if _routes_due(replica, returning):
        discover_routes(replica)
    if replica.kind in SCRAPED_KINDS:
        try:
            replica.set_load(parse_vllm_metrics(replica.client.get_text("/metrics")))
        except ApiError:
            replica.set_load(None)  # no figures: routing falls back on this worker's own counts


def check_all(replicas: Sequence[Replica]) -> None:
    """Probe every replica at once and wait for all (each bounded by the health timeouts)."""
    gevent.joinall([gevent.spawn(probe, replica) for replica in replicas])


class HealthChecker:
    """The background probes of one worker process."""

    def __init__(self, replicas: Sequence[Replica], interval: float) -> None:
        self.replicas = replicas
        self.interval = interval
        self._pid = 0
        self._first_round: Event | None = None

    def ensure_running(self) -> None:
        """Start the probes in this process if not yet; wait for their first round to finish."""
        if self._pid == os.getpid():
            if self._first_round is not None:
                self._first_round.wait()
            return
        self._pid = os.getpid()
        if not monkey.is_module_patched("socket"):
            # Without gevent's patching every probe would block the process (Flask's test
            # client, scripts): there, replicas are only checked by /readyz and by requests.
            self._first_round = None
            return
        self._first_round = Event()
        try:
            check_all(self.replicas)  # so the first requests are routed knowing models and health
        finally:
            self._first_round.set()
        for replica in self.replicas:
            gevent.spawn(self._run, replica)

    def _run(self, replica: Replica) -> None:
        while True:
            gevent.sleep(self.interval * random.uniform(1 - JITTER, 1 + JITTER))
            try:
                probe(replica)
            except Exception:  # a bug must not end the probes of this replica for good
                log.exception("health check of %s failed unexpectedly", replica.url)
