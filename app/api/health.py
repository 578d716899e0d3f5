"""Liveness and readiness: /healthz says the process answers, /readyz that it can serve.

/readyz reports the replicas as the worker that answers sees them (each worker checks them itself).
Anyone gets its status code and overall state; replica URLs and failure reasons only the metrics
token's bearer or a loopback client (app/access/operators.py).
"""
from __future__ import annotations

import json
from typing import Any

from flask import current_app

from app.access.operators import may_see_details
from app.api.docs import error_responses
from app.api.smorest import Blueprint
from app.errors import Unavailable
from app.observe import metrics
from app.schemas import HealthSchema, ReadinessSchema
from app.upstream import get_upstream
from app.upstream.replicas import SERVING

blp = Blueprint("health", __name__, description="Liveness and readiness probes.")


def engine_problem(state_files: str) -> str | None:
    """Why an embedded engine cannot serve, from the supervisors' state files (comma-separated); None when all run."""
    problems = [problem for path in state_files.split(",") if path.strip()
                if (problem := _one_engine_problem(path.strip())) is not None]
    return "; ".join(problems) or None


def _one_engine_problem(state_file: str) -> str | None:
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
@blp.response(200, ReadinessSchema)
@blp.doc(responses=error_responses(503))
def readyz() -> dict[str, Any]:
    """200 when at least one replica can serve (each is checked now); else 503. Details for operators only."""
    details = may_see_details()
    problem = engine_problem(current_app.config["ENGINE_STATE_FILE"])
    if problem:
        raise Unavailable(problem if details else "An embedded engine is not running.", code="engine_not_ready")
    replicas = get_upstream().check_now()
    for replica in replicas:
        metrics.set_replica_up(replica["url"], replica["state"] in SERVING)
    if not any(r["state"] in SERVING for r in replicas):
        reasons = "; ".join(f"{r['url']}: {r['reason']}" for r in replicas)
        raise Unavailable(f"no upstream replica can serve: {reasons}" if details else "no upstream replica can serve",
                          code="upstream_not_ready")
    return {"status": "ready", "replicas": replicas} if details else {"status": "ready"}
