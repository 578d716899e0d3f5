"""The WebSocket route is an ordinary Flask route: hooks see its handshake, and plain HTTP gets a clear 400."""
from __future__ import annotations

from flask import request

from app.errors import Unauthorized

HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_before_request_hooks_see_the_handshake(make_app):
    app = make_app()
    seen = []

    @app.before_request
    def require_key() -> None:  # what an API-key check does
        seen.append(request.path)
        if request.headers.get("Authorization") != "Bearer good":
            raise Unauthorized("Missing or invalid API key.")

    reply = app.test_client().get("/v1/generate/ws", headers=HANDSHAKE)
    assert seen == ["/v1/generate/ws"]
    assert reply.status_code == 401 and reply.json["error"]["code"] == "invalid_api_key"


def test_plain_http_to_the_websocket_route_is_400(client):
    reply = client.get("/v1/generate/ws")
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == "websocket_mismatch"


def test_websocket_to_an_http_route_is_400(client):
    reply = client.get("/v1/models", headers=HANDSHAKE)
    assert reply.status_code == 400 and "Only /v1/generate/ws" in reply.json["error"]["message"]
