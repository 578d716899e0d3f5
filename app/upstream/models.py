"""Model names: the names clients use (SLUICE_MODEL_MAP), the upstream's, and the default model.

When a map is set it is the whole list of names clients may use: /v1/models lists exactly
those, and any other name is a 404 without asking the upstream. Without a map, names go
to the upstream unchanged and /v1/models relays its list.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Flask, current_app

from app.config import ConfigError
from app.errors import NotFound, Unavailable
from app.upstream import get_upstream
from app.upstream.client import UpstreamClient

EXTENSION = "sluice.model_map"
_STARTED = int(time.time())  # the `created` of mapped names in /v1/models
_discovered: dict[str, str] = {}  # upstream base URL -> its first served model, per process


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
    return current_app.extensions[EXTENSION]


def resolve_model(requested: str | None, upstream: UpstreamClient) -> str:
    """The upstream's name for the request's model; without one, the configured MODEL or the upstream's first."""
    if requested:
        names = model_map()
        if not names:
            return requested
        if requested in names:
            return names[requested]
        raise NotFound(f"The model `{requested}` does not exist; GET /v1/models lists the models.",
                       param="model", code="model_not_found")
    if current_app.config["MODEL"]:
        return current_app.config["MODEL"]
    model = _discovered.get(upstream.base_url)
    if model is None:
        listing = upstream.get_json("/v1/models")
        try:
            model = listing["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise Unavailable(f"upstream {upstream.base_url} serves no model", code="no_model") from None
        _discovered[upstream.base_url] = model
    return model


def listed_models() -> dict[str, Any]:
    """The body of GET /v1/models: the mapped names, or the upstream's own list."""
    names = model_map()
    if names:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": _STARTED, "owned_by": "sluice"}
                                           for name in names]}
    return get_upstream().get_json("/v1/models")
