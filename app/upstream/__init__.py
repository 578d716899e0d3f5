"""Everything that talks to model servers: the HTTP client, its error mapping, the SSE parser."""
from __future__ import annotations

from flask import Flask, current_app

from app.errors import Unavailable
from app.upstream.client import UpstreamClient

EXTENSION = "sluice.upstream"


def init_app(app: Flask) -> None:
    """Create the upstream client from the app's settings (no connection is made yet)."""
    url = app.config["UPSTREAM_URL"]
    app.extensions[EXTENSION] = UpstreamClient(
        url,
        connect_timeout=app.config["UPSTREAM_CONNECT_TIMEOUT"],
        read_timeout=app.config["UPSTREAM_READ_TIMEOUT"],
        health_timeout=app.config["UPSTREAM_HEALTH_TIMEOUT"],
        pool_size=app.config["WORKER_CONNECTIONS"],
        api_key=app.config["UPSTREAM_API_KEY"],
    ) if url else None


def get_upstream() -> UpstreamClient:
    """The upstream for this request; 503 when none is configured."""
    client = current_app.extensions.get(EXTENSION)
    if client is None:
        raise Unavailable("No upstream is configured: set SLUICE_UPSTREAM_URL or run `sluice serve`.",
                          code="no_upstream")
    return client
