"""GET /metrics: the gateway's Prometheus metrics, added up over every gunicorn worker."""
from __future__ import annotations

import os

from flask import Response, request
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from app.access.operators import require_operator
from app.api.smorest import Blueprint

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

blp = Blueprint("metrics", __name__, description="Prometheus metrics, for operators.")


@blp.route("/metrics")
@blp.doc(responses={
    "200": {"description": "Prometheus text format (or OpenMetrics, when the scraper's Accept header asks "
                           "for it); the metrics are listed in docs/observability.md.",
            "content": {"text/plain": {"schema": {"type": "string"}}}},
})
def metrics_view() -> Response:
    """The metrics of every worker: for SLUICE_METRICS_TOKEN's bearer, or loopback clients when it is not set."""
    require_operator()
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(_registry()), headers={"Content-Type": content_type})


def _registry() -> CollectorRegistry:
    """Every worker's metrics under gunicorn (multiprocess folder); this process's alone otherwise."""
    if MULTIPROC_ENV not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
