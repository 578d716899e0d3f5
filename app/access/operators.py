"""Who may read what only operators should see: /metrics, and the replicas behind /readyz.

/metrics needs `Authorization: Bearer <SLUICE_METRICS_TOKEN>` when a token is set, and a
loopback client (Prometheus on the same host) when none is. /readyz names replicas and
reasons to the token or to loopback. The address is the client's after app/relay/proxies.py:
behind nginx, the address nginx saw, not nginx's own.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging

from flask import Flask, current_app, request

from app.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    """Say at start who may read /metrics, since an empty token narrows it to loopback."""
    if not app.config["METRICS_TOKEN"]:
        log.warning("SLUICE_METRICS_TOKEN is not set: /metrics and /readyz's replica details answer "
                    "loopback clients only; set a token to scrape from another host")


def is_loopback_client() -> bool:
    """Whether this request's client address is on loopback."""
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False  # a unix socket or no address: nothing proves it is local


def has_metrics_token() -> bool:
    """Whether this request carries the configured metrics token (False when none is configured)."""
    token: str = current_app.config["METRICS_TOKEN"]
    offered = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())


def may_see_details() -> bool:
    """Whether /readyz may name replicas and reasons: the metrics token, or a loopback client."""
    return has_metrics_token() or is_loopback_client()


def require_operator() -> None:
    """401 without the configured token; 403 for a remote client when no token is configured."""
    if current_app.config["METRICS_TOKEN"]:
        if not has_metrics_token():
            raise Unauthorized(f"{request.path} needs the header `Authorization: Bearer <SLUICE_METRICS_TOKEN>`.",
                               code="invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})
    elif not is_loopback_client():
        raise Forbidden(f"{request.path} answers loopback clients only while SLUICE_METRICS_TOKEN is not set.",
                        code="loopback_only")
