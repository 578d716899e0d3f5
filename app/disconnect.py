"""Notice a client that has gone while its request waits on the upstream, and stop waiting.

Under WSGI a dead client is normally seen only on the next write, which may be a minute
away while vLLM still queues the request. A watcher greenlet peeks at the client's socket
instead; on EOF it throws ClientDisconnected into the request's greenlet, which unwinds
out of the upstream read and closes the upstream connection, so vLLM aborts at once.
The same throw (`interruptible`) serves the WebSocket's cancel message.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gevent
from gevent import get_hub, getcurrent


class ClientCancelled(Exception):
    """The client abandoned the generation: it left, or asked to stop."""


class ClientDisconnected(ClientCancelled):
    """The client closed its connection before the response was complete."""


class CancelRequested(ClientCancelled):
    """The client asked to stop the generation (the WebSocket's cancel message)."""


Interrupt = Callable[[BaseException], None]


class _Guard:
    """Shared between the guarded greenlet and its watchers; single-threaded, so no lock."""

    def __init__(self) -> None:
        self.active = True


@contextmanager
def interruptible() -> Iterator[Interrupt]:
    """Within this block, the yielded function (called from any greenlet) raises its exception here."""
    guard = _Guard()
    target = getcurrent()

    def interrupt(exc: BaseException) -> None:
        # Throw from the hub, and only if the block is still running: by the time this
        # callback runs, the greenlet may have left it and moved on to other work.
        get_hub().loop.run_callback(_throw, target, guard, exc)

    try:
        yield interrupt
    finally:
        guard.active = False


def _throw(target: Any, guard: _Guard, exc: BaseException) -> None:
    if guard.active and not target.dead:
        guard.active = False
        target.throw(exc)


@contextmanager
def cancel_on_disconnect(environ: dict[str, Any]) -> Iterator[None]:
    """Within this block, a client disconnect raises ClientDisconnected in the current greenlet."""
    client_socket = environ.get("gunicorn.socket")
    if client_socket is None:  # not under gunicorn (Flask's test client): nothing to watch
        yield
        return
    with interruptible() as interrupt:
        watcher = gevent.spawn(_watch, client_socket, interrupt)
        try:
            yield
        finally:
            # Wait for it to die: gunicorn reads the next keep-alive request from this socket
            # next, and gevent refuses a read while the watcher still waits on the socket.
            watcher.kill()


def _watch(client_socket: socket.socket, interrupt: Interrupt) -> None:
    try:
        peeked = client_socket.recv(1, socket.MSG_PEEK)
    except OSError:
        peeked = b""
    if peeked:
        return  # the client sent more (a pipelined request): it is alive, stop watching
    interrupt(ClientDisconnected())
