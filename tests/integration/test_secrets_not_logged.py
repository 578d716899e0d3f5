"""Keys never reach the logs: neither a client's Authorization header nor the upstream's key,
whatever the request does and even at log level debug."""
from __future__ import annotations

import requests

from bench.processes import Gateway
from bench.sse_client import stream

CLIENT_KEY = "sk-client-7f3a9c1e"
UPSTREAM_KEY = "sk-upstream-52d0b8aa"


def test_keys_are_absent_from_the_gateway_log(simulator, tmp_logs):
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
                  "SLUICE_LOG_LEVEL": "debug"}, log=tmp_logs / "secrets-gateway.log")
    try:
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        url = gw.url + "/v1/generate"
        assert requests.post(url, json={"prompt": "x", "max_tokens": 2}, headers=auth, timeout=10).ok
        assert stream(url + "/stream", {"prompt": "x", "max_tokens": 2}, headers=auth).done
        assert requests.post(url, json={"prompt": ""}, headers=auth, timeout=10).status_code == 422
        assert requests.post(url, data="x", headers=auth, timeout=10).status_code == 415
        assert requests.post(url, json={"prompt": "x", "model": "no-such-model"}, headers=auth,
                             timeout=10).status_code == 404
        assert requests.get(gw.url + "/nowhere", headers=auth, timeout=10).status_code == 404
    finally:
        gw.stop()
    log = gw.log_path.read_text(errors="replace")
    assert "POST /v1/generate" in log, "the log was written"
    assert CLIENT_KEY not in log and UPSTREAM_KEY not in log
