"""Liveness and readiness: /healthz says the process answers, /readyz that it can serve."""
from __future__ import annotations

import json
from typing import Any

from flask import current_app

from app.api.smorest import Blueprint
from app.errors import ApiError, Unavailable
from app.schemas import ApiErrorSchema, HealthSchema, ReadySchema
from app.upstream import get_upstream

blp = Blueprint("health", __name__, description="Liveness and readiness probes.")


def engine_problem(state_file: str) -> str | None:
    """Why the embedded engine cannot serve, from its supervisor's state file; None when running."""
    if not state_file:
        return None
    try:
        with open(state_file, encoding="utf-8") as f:
            state: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return "embedded engine state is unknown (its supervisor has not reported yet)"
    if state.get("state") == "running":
        return None
    return f"embedded engine is {state.get('state', 'unknown')}: {state.get('reason', 'no reason given')}"


@blp.route("/healthz")
@blp.response(200, HealthSchema)
def healthz() -> dict[str, str]:
    """The process is alive (no upstream check)."""
    return {"status": "ok"}


@blp.route("/readyz")
@blp.response(200, ReadySchema)
@blp.alt_response(503, schema=ApiErrorSchema, description="Not ready: the reason is in the message")
def readyz() -> dict[str, str]:
    """200 when the upstream answers its health check; else 503 with the reason."""
    problem = engine_problem(current_app.config["ENGINE_STATE_FILE"])
    if problem:
        raise Unavailable(problem, code="engine_not_ready")
    upstream = get_upstream()
    try:
        upstream.check_health()
    except ApiError as exc:
        raise Unavailable(f"upstream not ready: {exc.message}", code="upstream_not_ready") from None
    return {"status": "ready", "upstream": upstream.base_url}
