"""Which model a request goes to when it names none."""
from __future__ import annotations

from flask import current_app

from app.errors import Unavailable
from app.upstream.client import UpstreamClient

_discovered: dict[str, str] = {}  # upstream base URL -> its first served model, per process


def resolve_model(requested: str | None, upstream: UpstreamClient) -> str:
    """The request's model, else the configured MODEL, else the upstream's first served model."""
    if requested:
        return requested
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
