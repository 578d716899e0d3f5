"""A WebSocket echo app for testing nginx's upgrade path under the gateway's own gunicorn settings.

It stands in for the gateway's WebSocket endpoint in tests/integration/test_nginx.py only;
it is never part of the product.
"""
from __future__ import annotations

from flask import Flask
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


@sock.route("/v1/generate/ws")
def echo(ws) -> None:
    """Send every message back until the client closes."""
    while True:
        ws.send(ws.receive())
