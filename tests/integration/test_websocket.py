"""/v1/generate/ws with a real WebSocket client through real gunicorn, in front of the simulator."""
from __future__ import annotations

import json
import time

import pytest
import websocket

from bench.processes import Gateway
from tests.integration.test_gateway import wait_cancelled

PING_INTERVAL = 0.2


@pytest.fixture(scope="module")
def gateway(simulator, tmp_logs):
    """One gevent worker in front of the simulator (a token every 20 ms), pinging every 0.2 s."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WS_PING_INTERVAL": str(PING_INTERVAL)},
                 log=tmp_logs / "ws-gateway.log")
    yield gw
    gw.stop()


@pytest.fixture
def ws(gateway):
    conn = websocket.create_connection(gateway.url.replace("http://", "ws://") + "/v1/generate/ws", timeout=10)
    yield conn
    conn.close()


def receive(ws: websocket.WebSocket) -> dict:
    """The next message (pings are answered by the client while it reads)."""
    return json.loads(ws.recv())


def until_end(ws: websocket.WebSocket) -> tuple[list[dict], dict]:
    """The token messages of one request, and the message that ended it (done or error)."""
    tokens = []
    while (message := receive(ws))["type"] == "token":
        tokens.append(message)
    return tokens, message


def test_tokens_then_done_with_usage(ws):
    ws.send(json.dumps({"prompt": "one two three", "max_tokens": 8}))
    tokens, done = until_end(ws)
    assert [t["text"] for t in tokens] == [f" tok{i}" for i in range(1, 9)]
    assert done == {"type": "done", "id": tokens[0]["id"], "finish_reason": "length",
                    "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}}


def test_cancel_stops_the_generation_upstream(ws, simulator):
    before = simulator.stats()["cancelled"]
    ws.send(json.dumps({"type": "generate", "prompt": "long", "max_tokens": 2000}))
    for _ in range(3):
        assert receive(ws)["type"] == "token"
    ws.send(json.dumps({"type": "cancel"}))
    tokens, done = until_end(ws)
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    assert 3 <= done["usage"]["completion_tokens"] < 2000
    wait_cancelled(simulator, before)


def test_requests_follow_each_other_on_one_connection(ws):
    ws.send(json.dumps({"prompt": "first", "max_tokens": 3}))
    ws.send(json.dumps({"prompt": "second", "max_tokens": 2}))  # sent while the first runs: waits its turn
    first, first_done = until_end(ws)
    second, second_done = until_end(ws)
    assert (len(first), len(second)) == (3, 2)
    assert first_done["id"] != second_done["id"] and {t["id"] for t in second} == {second_done["id"]}
    ws.send(json.dumps({"prompt": "third", "max_tokens": 1}))
    assert until_end(ws)[1]["finish_reason"] == "length"


def test_bad_messages_get_error_messages_and_the_connection_stays_usable(ws):
    ws.send("{not json")
    assert receive(ws) == {"type": "error", "id": None, "error": {
        "message": "Message is not valid JSON.", "type": "invalid_request_error", "param": None,
        "code": "invalid_json"}}
    ws.send(json.dumps({"prompt": "", "max_tokens": 2, "temprature": 1}))
    error = receive(ws)["error"]
    assert error["code"] == "validation_error" and error["param"] == "prompt" and "temprature" in error["message"]
    ws.send(json.dumps({"type": "shout"}))
    assert receive(ws)["error"]["param"] == "type"
    ws.send(json.dumps({"prompt": "now a good one", "max_tokens": 2}))
    tokens, done = until_end(ws)
    assert len(tokens) == 2 and done["type"] == "done"


def test_pings_keep_an_idle_connection_open(ws):
    pings, started = 0, time.monotonic()
    while time.monotonic() - started < 4 * PING_INTERVAL:
        opcode, _ = ws.recv_data_frame(control_frame=True)  # answers each ping with a pong
        pings += opcode == websocket.ABNF.OPCODE_PING
    assert pings >= 2
    ws.send(json.dumps({"prompt": "still there?", "max_tokens": 1}))
    assert until_end(ws)[1]["type"] == "done"


def test_client_vanishing_mid_generation_cancels_upstream(ws, simulator):
    before = simulator.stats()["cancelled"]
    ws.send(json.dumps({"prompt": "long", "max_tokens": 2000}))
    assert receive(ws)["type"] == "token"
    ws.sock.close()  # no close frame: the client is just gone
    wait_cancelled(simulator, before)
