"""Secure by default, as a new user meets the gateway: API keys and Redis configured, two gunicorn
workers, every other setting at its default (SLUICE_METRICS_TOKEN empty) but TRUSTED_PROXIES=1,
so that a test can speak as a remote client through X-Forwarded-For.

What only operators should see (/metrics, /readyz's details), bounds on `n`, limits that a
WebSocket cannot get round, keys checked before the body is read, a log line per request.
"""
from __future__ import annotations

import json
import socket
import uuid

import pytest
import requests
import websocket

from app.access.keys import KeyRing, RedisKeyStore
from bench.processes import Gateway, free_port, wait_until

REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # a client on another network, as nginx would say
MAX_QUEUED = 4
COMPLETION = {"model": "sim-model", "prompt": "one two", "max_tokens": 2}


@pytest.fixture(scope="module")
def ring(redis_server) -> KeyRing:
    redis_server.client.flushdb()
    return KeyRing(None, RedisKeyStore(redis_server.client))


@pytest.fixture(scope="module")
def gateway(simulator, redis_server, ring, tmp_logs):
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_MODEL": "sim-model", "SLUICE_WORKERS": "2",
                  "SLUICE_REDIS_URL": redis_server.url, "SLUICE_TRUSTED_PROXIES": "1",
                  "SLUICE_WS_MAX_QUEUED_MESSAGES": str(MAX_QUEUED), "SLUICE_CLIENT_BODY_TIMEOUT": "20"},
                 log=tmp_logs / "secure-gateway.log")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def not_ready(tmp_logs):
    """A gateway with a metrics token whose only replica is down."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}", "SLUICE_MODEL": "sim-model",
                  "SLUICE_WORKERS": "2", "SLUICE_TRUSTED_PROXIES": "1", "SLUICE_METRICS_TOKEN": "scrape-me"},
                 log=tmp_logs / "not-ready-gateway.log")
    yield gw
    gw.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_metrics_without_a_token_answer_loopback_only_and_say_so_at_start(gateway):
    local = requests.get(gateway.url + "/metrics", timeout=10)
    assert local.status_code == 200 and "sluice_requests_total" in local.text
    remote = requests.get(gateway.url + "/metrics", headers=REMOTE, timeout=10)
    assert remote.status_code == 403 and remote.json()["error"]["code"] == "loopback_only"
    assert "sluice_" not in remote.text
    assert "SLUICE_METRICS_TOKEN is not set: /metrics and /readyz's replica details answer loopback" in \
        gateway.log_path.read_text()


def test_readyz_tells_anyone_its_state_and_only_operators_the_replicas(gateway, simulator):
    local = requests.get(gateway.url + "/readyz", timeout=10).json()
    assert local["status"] == "ready" and local["replicas"][0]["url"] == simulator.url
    remote = requests.get(gateway.url + "/readyz", headers=REMOTE, timeout=10)
    assert remote.status_code == 200 and remote.json() == {"status": "ready"}


def test_readyz_reasons_need_the_metrics_token_from_afar(not_ready):
    url = not_ready.url + "/readyz"
    replica = requests.get(url, timeout=10).json()["error"]["message"]  # loopback: the details
    anonymous = requests.get(url, headers=REMOTE, timeout=10)
    with_token = requests.get(url, headers={**REMOTE, **bearer("scrape-me")}, timeout=10)
    assert anonymous.status_code == with_token.status_code == 503
    assert anonymous.json()["error"] == {"message": "no upstream replica can serve", "type": "service_unavailable",
                                         "param": None, "code": "upstream_not_ready"}
    assert "127.0.0.1:" in replica and "127.0.0.1:" in with_token.json()["error"]["message"]
    assert requests.get(not_ready.url + "/metrics", headers=REMOTE, timeout=10).status_code == 401
    assert requests.get(not_ready.url + "/metrics", headers={**REMOTE, **bearer("scrape-me")},
                        timeout=10).status_code == 200


@pytest.mark.parametrize("field, value", [("n", 100_000), ("n", 9), ("best_of", 9)])
def test_n_and_best_of_are_bounded_by_max_n(gateway, ring, field, value):
    key, _ = ring.create(f"many-{field}-{value}")
    reply = requests.post(gateway.url + "/v1/completions", json={**COMPLETION, field: value}, headers=bearer(key),
                          timeout=10)
    assert reply.status_code == 422
    assert reply.json()["error"]["param"] == field
    assert "at most 8 (setting MAX_N)" in reply.json()["error"]["message"]


def test_the_token_reservation_counts_every_completion(gateway, ring):
    key, _ = ring.create("hundred-tokens", tpm=100)
    eight = requests.post(gateway.url + "/v1/completions", json={**COMPLETION, "max_tokens": 20, "n": 8},
                          headers=bearer(key), timeout=10)
    assert eight.status_code == 429 and eight.json()["error"]["code"] == "token_limit_exceeded"
    one = requests.post(gateway.url + "/v1/completions", json={**COMPLETION, "max_tokens": 20, "n": 1},
                        headers=bearer(key), timeout=10)
    assert one.status_code == 200


def open_socket(gw: Gateway, key: str) -> websocket.WebSocket:
    return websocket.create_connection(gw.url.replace("http://", "ws://") + "/v1/generate/ws",
                                       header=[f"Authorization: Bearer {key}"], timeout=15)


def answer(ws: websocket.WebSocket) -> dict:
    """The message that ends one generation (done or error), skipping its tokens."""
    while (message := json.loads(ws.recv()))["type"] == "token":
        pass
    return message


def test_websocket_generations_count_against_the_request_limit(gateway, ring):
    key, _ = ring.create("three-a-minute", rpm=3)
    ws = open_socket(gateway, key)
    try:
        endings = []
        for _ in range(4):
            ws.send(json.dumps({"prompt": "again", "max_tokens": 2}))
            endings.append(answer(ws))
    finally:
        ws.close()
    assert [e["type"] for e in endings] == ["done", "done", "done", "error"]
    assert endings[3]["error"]["code"] == "rate_limit_exceeded"
    assert endings[3]["error"]["message"].startswith("Request limit of 3 per 1 minute reached for this key")
    # One budget whatever the transport: HTTP finds it spent, and so does a new handshake.
    assert requests.post(gateway.url + "/v1/generate", json={"prompt": "x"}, headers=bearer(key),
                         timeout=10).status_code == 429
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        open_socket(gateway, key)
    assert refused.value.status_code == 429 and 0 < int(refused.value.resp_headers["retry-after"]) <= 61

    def handshake_statuses() -> list[int]:
        return sorted(line["status"] for line in json_lines(gateway) if line.get("event") == "request"
                      and line["route"] == "/v1/generate/ws" and line["key_name"] == "three-a-minute")

    wait_until(lambda: len(handshake_statuses()) == 2, 10, "a line for each handshake")
    assert handshake_statuses() == [101, 429]


def messages_until_close(ws: websocket.WebSocket) -> tuple[list[dict], int]:
    """The text messages received until the server's close frame, and that frame's code."""
    messages = []
    while (frame := ws.recv_frame()).opcode != websocket.ABNF.OPCODE_CLOSE:  # frames as sent: no reply
        if frame.opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(json.loads(frame.data))
    ws.shutdown()
    return messages, int.from_bytes(frame.data[:2], "big")


def test_a_client_flooding_its_websocket_gets_an_error_and_a_1008_close(gateway, ring, simulator):
    key, _ = ring.create("flooder")
    ws = open_socket(gateway, key)
    ws.send(json.dumps({"prompt": "long", "max_tokens": 2000}))
    assert json.loads(ws.recv())["type"] == "token"
    # One more than the bound: the gateway closes once it has read that one. Messages sent after
    # its close would reach a closed socket, whose reset can overtake the close frame (the gateway
    # closes without waiting for the client's close frame: docs/api.md, WebSocket).
    for i in range(MAX_QUEUED + 1):
        ws.send(json.dumps({"prompt": f"more {i}", "max_tokens": 2}))
    messages, close_code = messages_until_close(ws)
    assert close_code == 1008
    assert messages[-1]["type"] == "error" and messages[-1]["error"]["code"] == "too_many_messages"
    assert all(m["type"] == "token" for m in messages[:-1])  # the queued requests never ran


def read_response(conn: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("who", ["wrong key", "spent key"])
def test_a_refused_request_is_answered_before_its_body_and_ends_cleanly(gateway, ring, who):
    key = "sluice-not-a-key"
    if who == "spent key":
        key, _ = ring.create(f"one-a-minute-{uuid.uuid4().hex[:6]}", rpm=1)
        assert requests.get(gateway.url + "/v1/models", headers=bearer(key), timeout=10).status_code == 200
    body = json.dumps({"prompt": "x" * 400_000}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        status, error = read_response(conn)  # no byte of the body sent yet: within 10 s, not 20
        assert (status, error["error"]["code"]) == ((401, "invalid_api_key") if who == "wrong key"
                                                    else (429, "rate_limit_exceeded"))
        conn.sendall(body)  # the gateway reads it and drops it: no reset while we send
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n")  # and the connection goes on
        assert read_response(conn) == (200, {"status": "ok"})


def json_lines(gw: Gateway) -> list[dict]:
    return [json.loads(line) for line in gw.log_path.read_text().splitlines() if line.startswith("{")]


def test_every_request_refused_or_not_has_one_json_line_and_its_id_in_the_access_log(gateway, ring):
    key, _ = ring.create("logged", rpm=6)
    expected = {  # request id -> (status, error code, route, key name)
        "r401": (401, "invalid_api_key", "/v1/generate", "anonymous"),
        "r404": (404, "not_found", "unmatched", "logged"),
        "r413": (413, "body_too_large", "/v1/generate", "logged"),
        "r415": (415, "unsupported_media_type", "/v1/generate", "logged"),
        "r422": (422, "validation_error", "/v1/generate", "logged"),
        "r200": (200, None, "/v1/generate", "logged"),
        "r429": (429, "rate_limit_exceeded", "/v1/generate", "logged"),
    }
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in expected}

    def send(name: str, path: str = "/v1/generate", authorized: bool = True, **kwargs) -> int:
        headers = {"X-Request-ID": ids[name], **(bearer(key) if authorized else {}), **kwargs.pop("headers", {})}
        return requests.post(gateway.url + path, headers=headers, timeout=10, **kwargs).status_code

    send("r401", authorized=False, json={"prompt": "x"})
    send("r404", path="/v1/nowhere", json={"prompt": "x"})
    send("r413", json={"prompt": "x" * (1024 * 1024 + 1)})
    send("r415", data="prompt=x", headers={"Content-Type": "text/plain"})
    send("r422", json={"prompt": ""})
    send("r200", json={"prompt": "x", "max_tokens": 1})
    while send("r429", json={"prompt": "x", "max_tokens": 1}) != 429:  # the rest of the key's 6 a minute
        ids["r429"] = f"r429-{uuid.uuid4().hex[:8]}"

    def logged() -> dict[str, dict]:
        return {line["request_id"]: line for line in json_lines(gateway) if line.get("event") == "request"}

    wait_until(lambda: {i for i in ids.values()} <= set(logged()), 10, "request lines")
    lines = logged()
    for name, (status, code, route, key_name) in expected.items():
        line = lines[ids[name]]
        assert (line["status"], line["error_code"], line["route"], line["key_name"]) == (status, code, route, key_name)
    access = [line for line in gateway.log_path.read_text().splitlines() if '"POST /v1/' in line]
    for request_id in ids.values():
        assert any(line.endswith(" " + request_id) for line in access), request_id
