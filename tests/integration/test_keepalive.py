"""A client's keep-alive connection (nginx keeps a pool of them) serves request after request."""
from __future__ import annotations

import http.client
import json


def test_one_connection_serves_blocking_and_streamed_generations(gateway):
    # The disconnect watcher of a finished request must be gone before gunicorn reads the
    # next request on the same socket: once it was not, and the next read met gunicorn's 500,
    # a ConcurrentObjectUseError traceback, or a closed connection.
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    statuses, sockets = [], []
    try:
        for i in range(30):
            path = "/v1/generate/stream" if i % 2 else "/v1/generate"
            body = json.dumps({"prompt": f"again {i}", "max_tokens": 3})
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            content = reply.read()
            statuses.append(reply.status)
            assert reply.getheader("Connection") != "close"
            assert content.endswith(b"data: [DONE]\n\n") if i % 2 else b"tok" in content
            sockets.append(conn.sock)  # http.client opens a new one if the gateway closed it
    finally:
        conn.close()
    assert statuses == [200] * 30
    assert all(s is sockets[0] for s in sockets), "the gateway closed the connection between requests"
    log = gateway.log_path.read_text(errors="replace")
    assert "ConcurrentObjectUseError" not in log and "Traceback" not in log
