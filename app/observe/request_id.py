"""Request IDs: the client's X-Request-ID when well-formed, else a new one; echoed back."""
from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from flask import Flask, Response, request

HEADER = "X-Request-ID"
# Strict on purpose: the id goes into logs and upstream headers, so nothing that could
# split a header or a log line gets through.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# A context variable rather than flask.g: a stream is relayed after Flask's request context
# has gone, in the same greenlet, and its log lines must still carry the id. Each greenlet
# (gevent) or thread has its own value.
_current: ContextVar[str] = ContextVar("sluice_request_id", default="")


def current_request_id() -> str:
    """The id of the request this greenlet serves (also while its stream is relayed); "" outside one."""
    return _current.get()


def init_app(app: Flask) -> None:
    """Assign an id to every request and return it in the response."""

    @app.before_request
    def _assign() -> None:
        offered = request.headers.get(HEADER, "")
        _current.set(offered if _WELL_FORMED.fullmatch(offered) else uuid.uuid4().hex)

    @app.after_request
    def _echo(response: Response) -> Response:
        response.headers[HEADER] = _current.get()
        return response
