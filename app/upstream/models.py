"""Which model a request goes to: the one it names, if a replica serves it, else the default."""
from __future__ import annotations

from app.upstream.pool import Pool


def resolve_model(requested: str | None, upstream: Pool) -> str:
    """The request's model (404 unless a replica serves it), else SLUICE_MODEL, else the first served."""
    if not requested:
        return upstream.default_model()
    upstream.replicas_for(requested)
    return requested
