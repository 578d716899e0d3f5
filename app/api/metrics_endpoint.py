"""GET /metrics: the gateway's Prometheus metrics, added up over every gunicorn worker."""
from __future__ import annotations

import hmac
import os

from flask import Response, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from app.api.smorest import Blueprint
from app.errors import Unauthorized

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

blp = Blueprint("metrics", __name__, description="Prometheus metrics, for operators.")


@blp.route("/metrics")
@blp.doc(responses={
    "200": {"description": "Prometheus text format (or OpenMetrics, when the scraper's Accept header asks "
                           "for it); the metrics are listed in docs/observability.md.",
            "content": {"text/plain": {"schema": {"type": "string"}}}},
})
def metrics_view() -> Response:
    """The metrics of every worker; a bearer token is required when SLUICE_METRICS_TOKEN is set."""
    _require_token(current_app.config["METRICS_TOKEN"])
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(_registry()), headers={"Content-Type": content_type})


def _require_token(token: str) -> None:
    if not token:
        return
    offered = request.headers.get("Authorization", "")
    if not hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("GET /metrics needs the header `Authorization: Bearer <SLUICE_METRICS_TOKEN>`.",
                           code="invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})


def _registry() -> CollectorRegistry:
    """Every worker's metrics under gunicorn (multiprocess folder); this process's alone otherwise."""
    if MULTIPROC_ENV not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
