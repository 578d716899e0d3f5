"""Everything that talks to model servers: the clients per kind, error mapping, SSE parser, model names."""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from app.errors import Unavailable
from app.upstream.client import OpenAICompatibleClient, UpstreamClient
from app.upstream.ollama import OllamaClient

EXTENSION = "sluice.upstream"

# SLUICE_UPSTREAM_KIND -> the client class that speaks to that kind of server.
CLIENT_KINDS: dict[str, type[UpstreamClient]] = {
    "vllm": UpstreamClient,
    "openai": OpenAICompatibleClient,
    "ollama": OllamaClient,
}


def make_client(kind: str, url: str, **settings: Any) -> UpstreamClient:
    """A client for the upstream at `url` of this kind; `settings` are the client's keyword arguments."""
    try:
        cls = CLIENT_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown upstream kind {kind!r}; known: {', '.join(CLIENT_KINDS)}") from None
    return cls(url, **settings)


def init_app(app: Flask) -> None:
    """Create the upstream client and the model map from the app's settings (no connection is made yet)."""
    from app.upstream import models

    models.init_app(app)
    url = app.config["UPSTREAM_URL"]
    app.extensions[EXTENSION] = make_client(
        app.config["UPSTREAM_KIND"], url,
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
