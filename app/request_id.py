"""Request IDs: the client's X-Request-ID when well-formed, else a new one; echoed back."""
from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
# Strict on purpose: the id goes into logs and upstream headers, so nothing that could
# split a header or a log line gets through.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def current_request_id() -> str:
    """This request's id."""
    return g.request_id


def init_app(app: Flask) -> None:
    """Assign an id to every request and return it in the response."""

    @app.before_request
    def _assign() -> None:
        offered = request.headers.get(HEADER, "")
        g.request_id = offered if _WELL_FORMED.fullmatch(offered) else uuid.uuid4().hex

    @app.after_request
    def _echo(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers[HEADER] = request_id
        return response
