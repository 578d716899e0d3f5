"""Notice a client that has gone while its request waits on the upstream, and stop waiting.

Under WSGI a dead client is normally seen only on the next write, which may be a minute
away while vLLM still queues the request. A watcher greenlet peeks at the client's socket
instead; on EOF it throws ClientDisconnected into the request's greenlet, which unwinds
out of the upstream read and closes the upstream connection, so vLLM aborts at once.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Any, Iterator

import gevent
from gevent import get_hub, getcurrent


class ClientDisconnected(Exception):
    """The client closed its connection before the response was complete."""


class _Guard:
    """Shared between the request greenlet and its watcher; single-threaded, so no lock."""

    def __init__(self) -> None:
        self.active = True


@contextmanager
def cancel_on_disconnect(environ: dict[str, Any]) -> Iterator[None]:
    """Within this block, a client disconnect raises ClientDisconnected in the current greenlet."""
    client_socket = environ.get("gunicorn.socket")
    if client_socket is None:  # not under gunicorn (Flask's test client): nothing to watch
        yield
        return
    guard = _Guard()
    watcher = gevent.spawn(_watch, client_socket, getcurrent(), guard)
    try:
        yield
    finally:
        guard.active = False
        # Wait for the watcher to be gone: while it still waits on the client socket, gunicorn's
        # next recv on that kept-alive connection fails with ConcurrentObjectUseError and drops it.
        watcher.kill(block=True)


def _watch(client_socket: socket.socket, request_greenlet: Any, guard: _Guard) -> None:
    try:
        peeked = client_socket.recv(1, socket.MSG_PEEK)
    except OSError:
        peeked = b""
    if peeked:
        return  # the client sent more (a pipelined request): it is alive, stop watching
    # Throw from the hub, and only if the request is still inside the guarded block: by the
    # time this callback runs it may have finished and moved on to another request.
    get_hub().loop.run_callback(_interrupt, request_greenlet, guard)


def _interrupt(request_greenlet: Any, guard: _Guard) -> None:
    if guard.active and not request_greenlet.dead:
        guard.active = False
        request_greenlet.throw(ClientDisconnected())
