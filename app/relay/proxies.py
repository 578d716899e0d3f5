"""Behind nginx: take the client's address, scheme and host from exactly the trusted proxies."""
from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix


def init_app(app: Flask) -> None:
    """Wrap the WSGI app in ProxyFix when SLUICE_TRUSTED_PROXIES proxies stand in front of it."""
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        # Each proxy appends the address it saw to X-Forwarded-For: the entry `hops` from the
        # right is the client's, whatever the client itself wrote further left. ProxyFix
        # rewrites the WSGI environ in place, so gunicorn's access log shows that address too.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
