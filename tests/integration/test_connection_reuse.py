"""Kept-alive client connections (nginx keeps its upstream connections open) serve request after request."""
from __future__ import annotations

import requests


def test_one_connection_serves_many_generations(gateway):
    with requests.Session() as session:
        for i in range(30):
            blocking = session.post(gateway.url + "/v1/generate", json={"prompt": f"x {i}", "max_tokens": 2},
                                    timeout=10)
            assert blocking.status_code == 200 and blocking.headers["Connection"] == "keep-alive"
            streamed = session.post(gateway.url + "/v1/generate/stream", json={"prompt": f"x {i}", "max_tokens": 2},
                                    timeout=10)
            assert streamed.status_code == 200 and streamed.content.endswith(b"data: [DONE]\n\n")
    # The disconnect watcher was once still waiting on the socket when gunicorn read the next
    # request from it: ConcurrentObjectUseError, a traceback, and the connection dropped.
    log = gateway.log_path.read_text(errors="replace")
    assert "ConcurrentObjectUseError" not in log and "Traceback" not in log
