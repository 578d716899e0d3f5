"""Model names: the names clients use (SLUICE_MODEL_MAP), the replicas', and the default model.

When a map is set it is the whole list of names clients may use: /v1/models lists exactly
those, and any other name is a 404 without asking an upstream. Without a map, a name goes
upstream unchanged if a replica serves it, and /v1/models lists what the replicas serve.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Flask, current_app

from app.config import ConfigError
from app.errors import NotFound
from app.upstream.pool import Pool

EXTENSION = "sluice.model_map"
_STARTED = int(time.time())  # the `created` of the names in /v1/models


def parse_model_map(raw: str) -> dict[str, str]:
    """`client=upstream,client2=upstream` as a dict; ConfigError naming the entry that is malformed."""
    names: dict[str, str] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        client, sep, upstream = (side.strip() for side in entry.partition("="))
        if not sep or not client or not upstream or "=" in upstream:
            raise ConfigError(f"setting MODEL_MAP: entry {entry!r} is not client_name=upstream_name")
        if client in names:
            raise ConfigError(f"setting MODEL_MAP: {client!r} is mapped twice")
        names[client] = upstream
    return names


def init_app(app: Flask) -> None:
    """Parse SLUICE_MODEL_MAP once, at start-up, so a malformed map stops the start."""
    app.extensions[EXTENSION] = parse_model_map(app.config["MODEL_MAP"])


def model_map() -> dict[str, str]:
    """The app's client-name -> upstream-name map (empty: names pass through)."""
    mapping: dict[str, str] = current_app.extensions[EXTENSION]
    return mapping


def resolve_model(requested: str | None, upstream: Pool) -> str:
    """The upstream's name for the request's model (404 unless a replica serves it); else the default."""
    if not requested:
        return upstream.default_model()
    names = model_map()
    if names:
        if requested not in names:
            raise NotFound(f"The model `{requested}` does not exist; GET /v1/models lists the models.",
                           param="model", code="model_not_found")
        requested = names[requested]
    upstream.replicas_for(requested)  # 404 when no replica serves it
    return requested


def listed_models(upstream: Pool) -> dict[str, Any]:
    """The body of GET /v1/models: the mapped names, or every model a replica serves (owned by its kind)."""
    owners = dict.fromkeys(model_map(), "sluice") or upstream.served_models()
    return {"object": "list", "data": [{"id": name, "object": "model", "created": _STARTED, "owned_by": owner}
                                       for name, owner in owners.items()]}
