"""Interrupting requests that wait on the upstream: all at once (a stopping worker), never mid-write."""
from __future__ import annotations

import gevent
import gevent.socket
import pytest

from app.errors import Unavailable
from app.relay.disconnect import cancel_on_disconnect, interrupt_all
from app.relay.shutdown import end_running


@pytest.fixture
def client_socket():
    """A connected socket standing in for gunicorn's client socket (the client stays)."""
    ours, theirs = gevent.socket.socketpair()
    yield ours
    ours.close()
    theirs.close()


def shutting_down() -> Unavailable:
    return Unavailable("restarting", code="shutting_down")


def run_request(client_socket, body) -> list:
    """Run `body(guard, steps)` as a request inside cancel_on_disconnect; return what happened."""
    steps: list = []

    def request() -> None:
        try:
            with cancel_on_disconnect({"gunicorn.socket": client_socket}) as guard:
                body(guard, steps)
        except Unavailable as exc:
            steps.append(exc.code)

    greenlet = gevent.spawn(request)
    gevent.sleep(0.01)  # it is now waiting inside the guarded block
    steps.append(f"interrupted {interrupt_all(shutting_down)}")
    greenlet.join(2)
    return steps


def test_a_request_waiting_on_the_upstream_is_ended(client_socket):
    def waiting(guard, steps):
        gevent.sleep(5)  # the upstream read
        steps.append("finished")

    assert run_request(client_socket, waiting) == ["interrupted 1", "shutting_down"]


def test_an_interruption_during_a_write_waits_for_the_write(client_socket):
    def writing(guard, steps):
        with guard.writing_to_client():
            gevent.sleep(0.05)  # gunicorn writing a piece to the client
            steps.append("written")
        steps.append("next upstream read")

    assert run_request(client_socket, writing) == ["interrupted 1", "written", "shutting_down"]


def test_nothing_to_end_once_requests_are_done(client_socket):
    with cancel_on_disconnect({"gunicorn.socket": client_socket}):
        pass
    assert end_running() == 0
