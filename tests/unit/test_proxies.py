"""SLUICE_TRUSTED_PROXIES: the client's address is taken from exactly that many proxies."""
from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder

# nginx (10.0.0.1) appended the address it saw (198.51.100.7), which sat behind a load
# balancer that appended 203.0.113.9; a client can write anything further left.
FORWARDED_FOR = "192.0.2.66, 203.0.113.9, 198.51.100.7"


@pytest.mark.parametrize("trusted, client, scheme", [
    (0, "10.0.0.1", "http"),  # nothing trusted: the socket's peer, forwarded headers ignored
    (1, "198.51.100.7", "https"),
    (2, "203.0.113.9", "https"),
])
def test_client_address_comes_from_the_trusted_proxies_only(make_app, trusted, client, scheme):
    app = make_app(TRUSTED_PROXIES=trusted)
    environ = EnvironBuilder(path="/healthz", environ_base={"REMOTE_ADDR": "10.0.0.1"}, headers={
        "X-Forwarded-For": FORWARDED_FOR, "X-Forwarded-Proto": "https, https"}).get_environ()
    statuses = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"] and b"ok" in body
    # The environ as gunicorn hands it to the app and then reads it for its access log line;
    # request.remote_addr (what rate limits key on) reads the same.
    assert environ["REMOTE_ADDR"] == client
    assert environ["wsgi.url_scheme"] == scheme
