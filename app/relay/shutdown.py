"""A stopping worker lets the generations in flight finish, lets go of idle connections at once,
and ends what still runs before its grace period is over, so that no client sees a stream just stop.

On SIGTERM (a stop, or the old workers of a HUP reload) gunicorn stops accepting and waits up to
GRACEFUL_TIMEOUT seconds for every connection to end, then the master kills the worker. Idle
connections would hold it that long: kept-alive HTTP connections waiting for a next request
are closed at once, and the `stopping` signal tells the WebSocket connections to close
(1001, going away) when idle. Generations in flight run on; shortly before the kill, each
stream still running gets an error event then [DONE], and each blocking request still
waiting a 503 with Retry-After.
"""
from __future__ import annotations

import logging
import signal
import socket
from typing import Any
from weakref import WeakSet

import gevent
from blinker import Namespace
from flask import Flask, Response, request

from app.errors import Unavailable
from app.relay.disconnect import interrupt_all

log = logging.getLogger(__name__)

# Seconds before the master's kill at which running generations are ended: time to write the
# error events and close the connections, on a busy machine.
MARGIN_SECONDS = 2.0

stopping = Namespace().signal("sluice.worker-stopping")
# Client sockets of this worker between two requests (kept alive, waiting for the next one).
_idle_sockets: WeakSet[socket.socket] = WeakSet()


def init_app(app: Flask) -> None:
    """Keep track of the connections that wait idle for their next request."""
    app.before_request(_busy)
    app.after_request(_idle_when_done)


def _busy() -> None:
    client_socket = request.environ.get("gunicorn.socket")
    if client_socket is not None:
        _idle_sockets.discard(client_socket)


def _idle_when_done(response: Response) -> Response:
    client_socket = request.environ.get("gunicorn.socket")
    if client_socket is not None:
        response.call_on_close(lambda: _idle_sockets.add(client_socket))
    return response


def install(graceful_timeout: float) -> None:
    """In a gunicorn worker: on SIGTERM, end what still runs MARGIN_SECONDS before the kill."""
    margin = min(MARGIN_SECONDS, graceful_timeout / 2)
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if callable(gunicorn_handler):
            gunicorn_handler(signum, frame)  # stop accepting, wait for the requests in flight
        gevent.spawn(let_idle_connections_go)
        gevent.spawn_later(graceful_timeout - margin, end_running)

    signal.signal(signal.SIGTERM, on_sigterm)


def let_idle_connections_go() -> None:
    """Close the kept-alive connections waiting for a request, and tell the WebSockets to close when idle."""
    for client_socket in list(_idle_sockets):
        try:
            # gunicorn's read of the next request sees the end and closes the connection.
            client_socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already closed
    _idle_sockets.clear()
    stopping.send()


def end_running() -> int:
    """End every generation still waiting on its upstream with a 'shutting down' error."""
    ended = interrupt_all(lambda: Unavailable("The gateway is restarting: retry the request.",
                                              code="shutting_down", headers={"Retry-After": "1"}))
    if ended:
        log.warning("grace period nearly over: ended %d generation(s) still running", ended)
    return ended
