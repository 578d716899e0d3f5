"""A deadline for reading the request body, so that a client sending it byte by byte cannot hold
a connection (a greenlet, a socket, a slot of WORKER_CONNECTIONS) for ever.

gunicorn bounds the wait for request headers (keepalive) but not for the body under gevent
workers; nginx in front buffers bodies itself, a gateway exposed directly needs this.
"""
from __future__ import annotations

import socket
from typing import Any

import gevent
from flask import Flask, current_app, request

from app.errors import PayloadTooLarge, RequestTimeout

BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


def init_app(app: Flask) -> None:
    """Read every request body up front, within CLIENT_BODY_TIMEOUT; views then find it in memory."""
    app.before_request(read_body_in_time)


def read_body_in_time() -> None:
    """Read the whole body (at most MAX_BODY_BYTES, else 413) or answer 408 and close the connection."""
    if request.method not in BODY_METHODS:
        return
    seconds = current_app.config["CLIENT_BODY_TIMEOUT"]
    try:
        with gevent.Timeout(seconds) as deadline:
            body = request.get_data(cache=True)  # cached: the JSON parser reads it from memory
            if _more_than_the_limit_follows(body):
                raise PayloadTooLarge(PayloadTooLarge.MESSAGE)
    except gevent.Timeout as exc:
        if exc is not deadline:
            raise
        _stop_reading(request.environ)
        raise RequestTimeout(f"Request body not received within {seconds:g} s "
                             "(setting CLIENT_BODY_TIMEOUT).") from None


def _more_than_the_limit_follows(body: bytes) -> bool:
    """True when a body without Content-Length (chunked) goes on past MAX_BODY_BYTES.

    werkzeug stops reading such a body at the limit without a word, so the client would get
    a misleading "Invalid JSON body" for a cut-off document.
    """
    limit = request.max_content_length
    if request.content_length is not None or limit is None or len(body) < limit:
        return False
    return bool(request.environ["wsgi.input"].read(1))


def _stop_reading(environ: dict[str, Any]) -> None:
    # The rest of the body is still on its way: make gunicorn see the end of the stream, so it
    # closes the connection after the 408 instead of draining the body at the client's pace.
    client_socket = environ.get("gunicorn.socket")
    if client_socket is not None:
        try:
            client_socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already gone
