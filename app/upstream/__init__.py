"""Everything that talks to model servers: clients per kind, the replica pool, routing, health, model names."""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from app.config import ConfigError
from app.errors import Unavailable
from app.upstream.client import OpenAICompatibleClient, UpstreamClient
from app.upstream.ollama import OllamaClient
from app.upstream.pool import FailoverPolicy, Pool
from app.upstream.replicas import HealthPolicy, Replica
from app.upstream.routing import make_strategy
from app.upstream.specs import load_specs

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
        raise ConfigError(f"upstream {url}: unknown upstream kind {kind!r}; known: {', '.join(CLIENT_KINDS)}") from None
    return cls(url, **settings)


def init_app(app: Flask) -> None:
    """Build the model map and the replica pool from the app's settings (no connection is made yet)."""
    from app.upstream import models

    models.init_app(app)
    config = app.config
    specs = load_specs(config)
    if not specs:
        app.extensions[EXTENSION] = None
        return
    policy = HealthPolicy(eject_after=config["EJECT_AFTER_FAILURES"], cooldown=config["EJECT_COOLDOWN"],
                          recovery=config["RECOVERY_SECONDS"])
    replicas = [
        Replica(spec, make_client(spec.kind, spec.url, connect_timeout=config["UPSTREAM_CONNECT_TIMEOUT"],
                                  read_timeout=config["UPSTREAM_READ_TIMEOUT"],
                                  health_timeout=config["UPSTREAM_HEALTH_TIMEOUT"],
                                  pool_size=config["WORKER_CONNECTIONS"],
                                  max_body_bytes=config["MAX_UPSTREAM_BODY_BYTES"],
                                  max_event_bytes=config["MAX_SSE_EVENT_BYTES"],
                                  api_key=config["UPSTREAM_API_KEY"] if spec.api_key is None else spec.api_key),
                policy)
        for spec in specs
    ]
    app.extensions[EXTENSION] = Pool(
        replicas, make_strategy(config["ROUTING_STRATEGY"], load_factor=config["AFFINITY_LOAD_FACTOR"]),
        FailoverPolicy(tries=config["FAILOVER_TRIES"], budget=config["FAILOVER_BUDGET"]),
        health_interval=config["HEALTH_INTERVAL"], affinity_chars=config["AFFINITY_PREFIX_CHARS"],
        default_model=config["MODEL"])


def get_upstream() -> Pool:
    """The replica pool, its health checks running in this worker; 503 when no upstream is configured."""
    pool: Pool | None = current_app.extensions.get(EXTENSION)
    if pool is None:
        raise Unavailable("No upstream is configured: set SLUICE_UPSTREAM_URL (or SLUICE_UPSTREAMS_FILE) "
                          "or run `sluice serve`.", code="no_upstream")
    pool.health.ensure_running()
    return pool
