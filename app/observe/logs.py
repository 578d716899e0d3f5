"""JSON log lines on stderr: one per request, one per generation, and every other log record,
each with its request id.

The request line is written when the response is closed (for a stream, after its last
event), refused requests included; the generation line comes from the Exchange `finished`
signal. No line carries a header or a key: the client is named by its key name only (see
docs/observability.md for the fields).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from app import exchange as exchanges
from app.exchange import Exchange
from app.observe.metrics import key_label, route_label
from app.observe.request_id import current_request_id

generation_log = logging.getLogger("app.generations")
request_log = logging.getLogger("app.requests")
SWITCHING_PROTOCOLS = 101  # what the client of a WebSocket got: its status in the request's line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, request id, message, and its `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "request_id": current_request_id() or None,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """The gateway's handler on the root logger (a class of its own, so it is installed once)."""


def init_app(app: Flask) -> None:
    """Send every log record as JSON to stderr at SLUICE_LOG_LEVEL, and log each generation."""
    configure(app.config["LOG_LEVEL"])
    exchanges.finished.connect(log_generation)
    app.before_request(_mark_start)
    app.after_request(_log_request_when_closed)


def configure(level: str) -> None:
    """Install the JSON handler on the root logger once per process, and set the level."""
    # Two records per request: the fields no line carries are not collected for them (the logging
    # HOWTO's "Optimization": the caller's file and line walk the stack, the thread and process
    # names ask threading and multiprocessing). The pid stays: every line carries it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    if not any(isinstance(h, _JsonHandler) for h in root.handlers):
        handler = _JsonHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())


def log_generation(exchange: Exchange) -> None:
    """The one line that tells what happened to a generation."""
    generation_log.info("generation %s", exchange.outcome, extra={"fields": generation_fields(exchange)})


def generation_fields(exchange: Exchange) -> dict[str, Any]:
    """The fields of a generation's log line."""
    ttft = exchange.ttft_seconds
    return {
        "event": "generation",
        "request_id": exchange.request_id,
        "key_name": key_label(exchange.key_name),
        "route": exchange.route,
        "model": exchange.model,
        "stream": exchange.stream,
        "replica": exchange.replica,
        "status": exchange.status,
        "outcome": exchange.outcome,
        "error_code": exchange.error_code,
        "prompt_tokens": exchange.prompt_tokens,
        "completion_tokens": exchange.completion_tokens,
        "ttft_seconds": None if ttft is None else round(ttft, 6),
        "duration_seconds": round(exchange.duration, 6),
    }


def _mark_start() -> None:
    g.sluice_log_started = time.perf_counter()


def _log_request_when_closed(response: Response) -> Response:
    """Write the request's line once its response has been sent (a stream's too, after its last event)."""
    fields = request_fields(response)
    started: float = g.get("sluice_log_started", time.perf_counter())

    def log_request() -> None:
        fields["duration_seconds"] = round(time.perf_counter() - started, 6)
        request_log.info("%s %s %s", fields["method"], fields["route"], fields["status"],
                         extra={"fields": fields})

    if _served_websocket(response):
        # Its view returns when the socket has closed, and gunicorn never closes this response.
        fields["status"] = SWITCHING_PROTOCOLS
        log_request()
    else:
        response.call_on_close(log_request)
    return response


def _served_websocket(response: Response) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and response.status_code < 400


def request_fields(response: Response) -> dict[str, Any]:
    """The fields of a request's log line: what was asked, by whom, and how it was answered."""
    return {
        "event": "request",
        "request_id": current_request_id(),
        "key_name": key_label(g.get("key_name")),
        "method": request.method,
        "route": route_label(),
        "status": response.status_code,
        "error_code": error_code(response),
    }


def error_code(response: Response) -> str | None:
    """The `code` of an error response in the one error shape; None for anything else."""
    if response.status_code < 400 or not response.is_json:
        return None
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None
