"""A gateway with API keys as its clients and operators meet it, under real gunicorn in front of the simulator.

The `openai` package gets its own error classes for a refused key and a spent limit;
/metrics answers only its token; no key reaches a log line or a metric.
"""
from __future__ import annotations

import base64
import json

import openai
import pytest
import requests
import websocket

from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway

MODEL = "gpt-4o-mini"  # mapped to the simulator's sim-model
ASK = [{"role": "user", "content": "Is this key safe?"}]
METRICS_TOKEN = "scrape-secret"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def ring(tmp_logs) -> KeyRing:
    """The gateway's keys file; keys made after it started are read on their first use."""
    return KeyRing(FileKeyStore(tmp_logs / "keyed-keys.json"), None)


@pytest.fixture(scope="module")
def gateway(simulator, ring, tmp_logs):
    """One worker (its request counts are exact without Redis), keys from a file, /metrics behind a token."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_KEYS_FILE": str(ring.file.path),
                  "SLUICE_METRICS_TOKEN": METRICS_TOKEN, "SLUICE_MODEL_MAP": f"{MODEL}=sim-model"},
                 log=tmp_logs / "keyed-gateway.log")
    yield gw
    gw.stop()


def client_for(gw: Gateway, key: str) -> openai.OpenAI:
    # No retries: the tests look at the first answer (the client retries 429 by default).
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


# The package will not send a request without a key unless told to leave the header out.
@pytest.mark.parametrize("headers, says", [({"Authorization": openai.Omit()}, "Missing API key"),
                                           ({}, "Invalid or revoked API key")])
def test_no_key_or_a_wrong_key_is_an_authentication_error(gateway, headers, says):
    with client_for(gateway, "sluice-not-a-key") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2, extra_headers=headers)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert caught.value.body["message"].startswith(says)
    assert caught.value.response.headers["WWW-Authenticate"].startswith('Bearer realm="sluice"')


def test_third_request_of_a_two_per_minute_key_is_a_rate_limit_error(gateway, ring):
    key, _ = ring.create("two-a-minute", rpm=2)
    with client_for(gateway, key) as client:
        answers = [client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2) for _ in range(2)]
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    assert [a.usage.completion_tokens for a in answers] == [2, 2]
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert caught.value.body["message"].startswith("Request limit of 2 per 1 minute reached for this key")
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 61


def scrape(gw: Gateway, authorization: str | None = f"Bearer {METRICS_TOKEN}") -> requests.Response:
    return requests.get(gw.url + "/metrics", headers={"Authorization": authorization} if authorization else {},
                        timeout=10)


def test_metrics_answer_their_token_only(gateway, ring):
    key, _ = ring.create("not-for-metrics")
    for authorization in (None, f"Bearer {key}", f"Bearer {METRICS_TOKEN}x", METRICS_TOKEN):
        refused = scrape(gateway, authorization)
        assert refused.status_code == 401, authorization
        assert set(refused.json()["error"]) == ERROR_KEYS
        assert refused.json()["error"]["code"] == "invalid_metrics_token"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    answered = scrape(gateway)
    assert answered.status_code == 200 and "sluice_requests_total" in answered.text
    # The token opens /metrics and nothing else: it is not an API key.
    assert requests.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                        timeout=10).status_code == 401


def test_keys_reach_neither_the_log_nor_the_metrics(gateway, ring):
    key, _ = ring.create("leak-check", rpm=3)
    bearer = {"Authorization": f"Bearer {key}"}
    with client_for(gateway, key) as client:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
        assert len(list(client.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True))) == 2
    ws = websocket.create_connection(gateway.url.replace("http://", "ws://") + "/v1/generate/ws",
                                     header=bearer, timeout=10)
    try:
        ws.send(json.dumps({"prompt": "over a socket", "max_tokens": 2}))
        assert [json.loads(ws.recv())["type"] for _ in range(3)] == ["token", "token", "done"]
    finally:
        ws.close()
    # The wrong ways to send it, refused, and a request over the key's limit.
    basic = base64.b64encode(f"{key}:".encode()).decode()
    refusals = [requests.get(gateway.url + "/v1/models", params={"api_key": key}, timeout=10),
                requests.get(gateway.url + "/v1/models", headers={"Authorization": f"Basic {basic}"}, timeout=10),
                requests.get(gateway.url + "/v1/models", headers=bearer, timeout=10)]
    assert [r.status_code for r in refusals] == [401, 401, 429]

    metrics = scrape(gateway).text
    assert 'key_name="leak-check"' in metrics, "the key is known by its name"
    log = gateway.log_path.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    named = [r["event"] for r in records if r.get("key_name") == "leak-check"]
    assert named.count("generation") == 3, "a log line per generation, naming the key"
    assert any(r.get("event") == "request" and r["status"] == 429 and r["key_name"] == "leak-check"
               for r in records), "the refused request's line names the key too"
    assert key not in metrics and key not in log
    assert key[7:] not in log and basic not in log, "not even in part, nor encoded"
