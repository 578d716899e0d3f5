"""A stopping worker ends the generations still running before its grace period is over, so
that no client sees a stream just stop.

On SIGTERM gunicorn lets a worker finish its requests for GRACEFUL_TIMEOUT seconds, then the
master kills it: a stream cut that way ends without [DONE], which a client cannot tell from
a broken network. Here, shortly before that moment, each stream still running gets an error
event then [DONE], and each blocking request still waiting a 503 with Retry-After.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

import gevent

from app.errors import Unavailable
from app.relay.disconnect import interrupt_all

log = logging.getLogger(__name__)

# Seconds before the master's kill at which running generations are ended: time to write the
# error events and close the connections, on a busy machine.
MARGIN_SECONDS = 2.0


def install(graceful_timeout: float) -> None:
    """In a gunicorn worker: on SIGTERM, end what still runs MARGIN_SECONDS before the kill."""
    margin = min(MARGIN_SECONDS, graceful_timeout / 2)
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if callable(gunicorn_handler):
            gunicorn_handler(signum, frame)  # stop accepting, wait for the requests in flight
        gevent.spawn_later(graceful_timeout - margin, end_running)

    signal.signal(signal.SIGTERM, on_sigterm)


def end_running() -> int:
    """End every generation still waiting on its upstream with a 'shutting down' error."""
    ended = interrupt_all(lambda: Unavailable("The gateway is restarting: retry the request.",
                                              code="shutting_down", headers={"Retry-After": "1"}))
    if ended:
        log.warning("grace period nearly over: ended %d generation(s) still running", ended)
    return ended
