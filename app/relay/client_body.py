"""A deadline for reading the request body, so that a client sending it byte by byte cannot hold
a connection (a greenlet, a socket, a slot of WORKER_CONNECTIONS) for ever.

gunicorn bounds the wait for request headers (keepalive) but not for the body under gevent
workers; nginx in front buffers bodies itself, a gateway exposed directly needs this.

The body is read only once the key and the request limit have let the request in (app/__init__.py
orders the hooks so). A request refused before that gets its answer at once, and only then is
the rest of its body read and dropped, a piece at a time (nothing is kept), within MAX_BODY_BYTES
and CLIENT_BODY_TIMEOUT: the client, still sending, reads the answer instead of a connection
reset, and its connection is ready for its next request. A body that does not fit those bounds
gets the connection shut once the answer is out.
"""
from __future__ import annotations

import socket
from typing import Any

import gevent
from flask import Flask, Response, current_app, g, request

from app.errors import PayloadTooLarge, RequestTimeout

BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
DROP_CHUNK_BYTES = 64 * 1024


def init_app(app: Flask) -> None:
    """Read every admitted request's body up front, within CLIENT_BODY_TIMEOUT; views then find it in memory."""
    app.before_request(read_body_in_time)
    app.after_request(_drop_body_after_refusal)


def read_body_in_time() -> None:
    """Read the whole body (at most MAX_BODY_BYTES, else 413) or answer 408 and close the connection."""
    if request.method not in BODY_METHODS:
        return
    seconds = current_app.config["CLIENT_BODY_TIMEOUT"]
    g.sluice_body_read = True  # from here on the body is ours to read, whatever happens
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


def _drop_body_after_refusal(response: Response) -> Response:
    """A request answered before its body was read: drop the body once the answer is out."""
    if g.get("sluice_body_read") or not _has_body():
        return response
    environ = request.environ
    limit, seconds = current_app.config["MAX_BODY_BYTES"], current_app.config["CLIENT_BODY_TIMEOUT"]
    response.call_on_close(lambda: _drop_rest(environ, limit, seconds))
    return response


def _has_body() -> bool:
    if request.method not in BODY_METHODS:
        return False
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def _drop_rest(environ: dict[str, Any], limit: int, seconds: float) -> None:
    """Read and drop the rest of a refused request's body; shut the connection if it does not fit the bounds."""
    body = environ["wsgi.input"]
    dropped, ended = 0, False
    with gevent.Timeout(seconds, False):
        try:
            while dropped <= limit and (chunk := body.read(DROP_CHUNK_BYTES)):
                dropped += len(chunk)
            ended = dropped <= limit
        except Exception:  # a malformed or cut body: the connection is shut all the same
            pass
    client_socket = environ.get("gunicorn.socket")
    if not ended and client_socket is not None:
        try:
            client_socket.shutdown(socket.SHUT_RDWR)  # gunicorn sees the end and closes the connection
        except OSError:
            pass  # already gone
