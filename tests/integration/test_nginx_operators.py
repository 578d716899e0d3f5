"""The shipped nginx config passes /metrics and /readyz to its allow lists only (nginx/README.md).

nginx here listens on loopback; a client bound to 127.0.0.5 is, for nginx's allow lists, any
address but this host's 127.0.0.1: the public.
"""
from __future__ import annotations

import pytest

from bench.processes import Gateway
from tests.nginx import Nginx, upstream_lines

PUBLIC = "127.0.0.5"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def nginx(simulator, tmp_logs, tmp_path_factory):
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_MODEL": "sim-model", "SLUICE_WORKERS": "2",
                  "SLUICE_TRUSTED_PROXIES": "1"}, log=tmp_logs / "operators-gateway.log")
    proxy = Nginx(tmp_path_factory.mktemp("nginx-operators"), upstream_lines([gw.url.removeprefix("http://")]))
    yield proxy
    proxy.stop()
    gw.stop()


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/metrics?format=x", "//metrics", "/%72eadyz"])
def test_the_public_gets_a_403_for_operators_paths(nginx, path):
    reply = nginx.session(source_address=PUBLIC).get(nginx.url + path, timeout=10)
    assert reply.status_code == 403
    assert set(reply.json()["error"]) == ERROR_KEYS and reply.json()["error"]["code"] == "forbidden"


def test_this_host_scrapes_metrics_and_sees_the_replicas(nginx, simulator):
    session = nginx.session(source_address="127.0.0.1")
    assert "sluice_requests_total" in session.get(nginx.url + "/metrics", timeout=10).text
    assert session.get(nginx.url + "/readyz", timeout=10).json()["replicas"][0]["url"] == simulator.url


def test_the_public_still_reaches_everything_else(nginx):
    session = nginx.session(source_address=PUBLIC)
    assert session.get(nginx.url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert session.get(nginx.url + "/v1/models", timeout=10).status_code == 200
