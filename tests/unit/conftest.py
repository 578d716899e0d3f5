"""Unit tests mock the upstream with `responses`, which works at requests' level: route the
gateway's urllib3 requests through requests here, so that those mocks answer them.

The urllib3 path itself (pool, chunked reading, faults) runs against real upstreams in
tests/integration; its chunked decoder has unit tests of its own (test_upstream_http.py).
"""
from __future__ import annotations

import pytest
import requests

from app.upstream import http


def _send_through_requests(pool, method, path, body, headers, timeout, max_body_bytes=None):
    url = f"{pool.scheme}://{pool.host}{f':{pool.port}' if pool.port else ''}{path}"
    reply = requests.request(method, url, data=body, headers=headers, timeout=timeout, stream=True,
                             allow_redirects=False)
    return http.Response(reply.raw, max_body_bytes)


@pytest.fixture(autouse=True)
def upstream_through_requests(monkeypatch):
    monkeypatch.setattr(http, "send", _send_through_requests)
