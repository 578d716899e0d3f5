"""Notice a client that has gone while its request waits on the upstream, and stop waiting.

Under WSGI a dead client is normally seen only on the next write, which may be a minute
away while vLLM still queues the request. An event-loop watcher on the client's socket
(libev's io watcher: no greenlet, no stack, a few hundred bytes per request) peeks at it
when it turns readable; on EOF it throws ClientDisconnected into the request's greenlet,
which unwinds out of the upstream read and closes the upstream connection, so vLLM aborts
at once.

The same guarded throw (`interruptible`) serves the WebSocket's cancel message, and lets a
stopping worker end every request still waiting on the upstream (`interrupt_all`, used by
app/relay/shutdown.py).
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gevent import get_hub, getcurrent

_READ = 1  # libev's EV_READ


class ClientCancelled(Exception):
    """The client abandoned the generation: it left, or asked to stop."""


class ClientDisconnected(ClientCancelled):
    """The client closed its connection before the response was complete."""


class CancelRequested(ClientCancelled):
    """The client asked to stop the generation (the WebSocket's cancel message)."""


class Guard:
    """One greenlet inside an interruptible block; single-threaded (greenlets), so no lock."""

    def __init__(self, request_greenlet: Any) -> None:
        self.request_greenlet = request_greenlet
        self.active = True  # an interruption may still be thrown in
        self.writing = False  # the stream handed a piece to gunicorn, which is writing it
        self.pending: BaseException | None = None
        self._writing = _WritingToClient(self)

    def interrupt(self, error: BaseException) -> None:
        """Raise `error` in the guarded greenlet (callable from any greenlet), if it is still inside."""
        # Throw from the hub, and only if the block is still running: by the time this
        # callback runs, the greenlet may have left it and moved on to other work.
        get_hub().loop.run_callback(_interrupt, self, error)

    def writing_to_client(self) -> _WritingToClient:
        """Around a stream's `yield`: an interruption now waits until gunicorn has written the piece.

        Thrown during the write, it would surface inside gunicorn, which cuts the connection
        without the error event.
        """
        return self._writing


class _WritingToClient:
    """Guard.writing_to_client's context manager: one per guard, entered once per piece a stream sends
    (a class, not @contextmanager, which would build a generator per piece)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def __enter__(self) -> None:
        self.guard.writing = True

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        guard = self.guard
        guard.writing = False
        if exc_type is None and guard.pending is not None:
            pending, guard.pending = guard.pending, None
            raise pending


_guards: set[Guard] = set()  # the greenlets of this worker inside an interruptible block


@contextmanager
def interruptible() -> Iterator[Guard]:
    """Within this block, guard.interrupt(error) from any greenlet raises the error here."""
    guard = Guard(getcurrent())
    _guards.add(guard)
    try:
        yield guard
    finally:
        guard.active = False
        _guards.discard(guard)


@contextmanager
def cancel_on_disconnect(environ: dict[str, Any]) -> Iterator[Guard]:
    """Within this block, a client disconnect raises ClientDisconnected in the current greenlet."""
    with interruptible() as guard:
        client_socket = environ.get("gunicorn.socket")
        if client_socket is None:  # not under gunicorn (Flask's test client): nothing to watch
            yield guard
            return
        watcher = get_hub().loop.io(client_socket.fileno(), _READ)
        watcher.start(_readable, client_socket, guard, watcher)
        try:
            yield guard
        finally:
            # Stopped before gunicorn reads the next request from this kept-alive connection.
            watcher.stop()
            watcher.close()


def interrupt_all(make_error: Callable[[], BaseException]) -> int:
    """Raise a new error from `make_error` in every greenlet inside an interruptible block."""
    guards = list(_guards)
    for guard in guards:
        guard.interrupt(make_error())
    return len(guards)


def _readable(client_socket: socket.socket, guard: Guard, watcher: Any) -> None:
    """In the event loop: the client's socket has data, or its end (EOF, reset)."""
    raw = getattr(client_socket, "_sock", client_socket)  # gevent's socket wraps a non-blocking one
    try:
        peeked = raw.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return  # nothing after all: keep watching
    except OSError:
        peeked = b""
    watcher.stop()  # either way, nothing more to learn: data means a pipelined request, alive
    if not peeked:
        guard.interrupt(ClientDisconnected())


def _interrupt(guard: Guard, error: BaseException) -> None:
    if not guard.active or guard.request_greenlet.dead:
        return
    guard.active = False
    if guard.writing:
        guard.pending = error
    else:
        guard.request_greenlet.throw(error)
