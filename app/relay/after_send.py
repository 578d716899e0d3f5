"""Work that may wait until the client has its response: run it after the response is sent.

Settling counters in Redis after a blocking generation costs a round trip the client need
not wait for. `defer` keeps such work on the request and runs it when gunicorn has written
the response (werkzeug's `call_on_close`), before the connection reads its next request.
Outside a request (a stream's relay runs after its view returned) the work runs at once:
there the response has gone out already.
"""
from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, g, has_request_context

_PENDING = "_sluice_after_send"


def defer(work: Callable[[], None]) -> None:
    """Run `work` once this request's response has been sent (at once outside a request)."""
    pending: list[Callable[[], None]] | None = g.get(_PENDING) if has_request_context() else None
    if pending is None:
        if has_request_context():
            pending = []
            setattr(g, _PENDING, pending)
        else:
            work()
            return
    pending.append(work)


def _run(pending: list[Callable[[], None]]) -> None:
    for work in pending:
        work()


def _after_sending(response: Response) -> Response:
    pending: list[Callable[[], None]] | None = g.pop(_PENDING, None)
    if pending:
        response.call_on_close(lambda: _run(pending))
    return response


def _if_never_sent(_: BaseException | None) -> None:
    # No response was made (an error before after_request ran): do the work now, never drop it.
    pending: list[Callable[[], None]] | None = g.pop(_PENDING, None)
    if pending:
        _run(pending)


def init_app(app: Flask) -> None:
    """Hand the deferred work of each request to its response."""
    app.after_request(_after_sending)
    app.teardown_request(_if_never_sent)
