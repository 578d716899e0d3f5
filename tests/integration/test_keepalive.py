"""A client's keepalive connection (nginx keeps a pool of them) serves request after request."""
from __future__ import annotations

import http.client
import json

import pytest


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/generate/stream"])
def test_requests_follow_each_other_on_one_connection(gateway, path):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    body = json.dumps({"prompt": "again", "max_tokens": 3})
    statuses, sockets = [], []
    try:
        for _ in range(3):
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            statuses.append(reply.status)
            assert b"tok" in reply.read()
            sockets.append(conn.sock)  # http.client opens a new one if the gateway closed it
    finally:
        conn.close()
    # Before the disconnect watcher was awaited, the second request met gunicorn's 500.
    assert statuses == [200, 200, 200]
    assert all(s is sockets[0] for s in sockets), "the gateway closed the connection between requests"
