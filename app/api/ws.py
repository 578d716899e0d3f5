"""WebSocket generation at /v1/generate/ws (flask-sock, inside the gevent worker).

One JSON text message per request and per answer; requests follow each other on one
connection, and one sent while a generation runs waits its turn.
- client: a native generate request (the body of POST /v1/generate/stream; an optional
  "type": "generate"), or {"type": "cancel"} to stop the running generation upstream;
- server: {"type": "token", "id", "text"} per piece of text, then {"type": "done", "id",
  "finish_reason", "usage"} (finish_reason "cancelled" after a cancel), or instead
  {"type": "error", "id", "error": {...}} in the one error shape.
The handshake is an ordinary GET through Flask, so every before_request hook (API keys)
sees it. Each generation then counts against the key's request, token and concurrency limits
as an HTTP request does (a refusal is an error message). Messages sent ahead of the running
generation wait in a queue of SLUICE_WS_MAX_QUEUED_MESSAGES; one more is an error and a 1008
close. When the worker stops, idle connections are closed at once (1001, going away) and busy
ones after their generation. Server pings (SLUICE_WS_PING_INTERVAL) keep idle connections open.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from weakref import WeakSet

import gevent
from apispec import APISpec
from flask import Flask, current_app
from flask.typing import ResponseReturnValue
from flask_sock import Sock
from marshmallow import ValidationError
from simple_websocket import ConnectionClosed, Server
from werkzeug.routing import WebsocketMismatch
from wsproto.frame_protocol import CloseReason

from app import gateway
from app.access import limits
from app.api.generate import NativeStreamTranslator, completion_request
from app.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    ValidationFailed,
    error_response,
    from_validation_messages,
    internal_error,
)
from app.exchange import COMPLETED, Exchange, failures_recorded
from app.observe.request_id import current_request_id
from app.relay import shutdown
from app.relay.disconnect import CancelRequested, ClientCancelled, ClientDisconnected, Guard, interruptible
from app.relay.streaming import upstream_events
from app.schemas import GenerateRequestSchema
from app.upstream import get_upstream
from app.upstream.models import resolve_model

log = logging.getLogger(__name__)

PATH = "/v1/generate/ws"
UPSTREAM_PATH = "/v1/completions"
sock = Sock()
_schema = GenerateRequestSchema()
# This worker's open connections, for closing them when it stops.
_open_connections: WeakSet[Connection] = WeakSet()


class QueueOverflow(ClientCancelled):
    """The client sent more messages ahead of its generation than the queue holds."""


def init_app(app: Flask, spec: APISpec) -> None:
    """Register the WebSocket route, with pings and the body size limit from the settings, and document it."""
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": app.config["WS_PING_INTERVAL"] or None,
                                         "max_message_size": app.config["MAX_BODY_BYTES"]}
    sock.init_app(app)
    shutdown.stopping.connect(_going_away)
    app.register_error_handler(WebsocketMismatch, _not_a_websocket_route)
    # OpenAPI 3 has no WebSocket operations: the handshake is documented as the GET it is.
    [rule] = [rule for rule in app.url_map.iter_rules() if rule.rule == PATH]
    spec.path(rule=rule, operations={"get": {
        "summary": "Generate over a WebSocket: several requests per connection, cancel, pings.",
        "tags": ["generate"],
        "description": "After the handshake (the API key is checked on it), send a generate request as a "
                       "JSON text message (the body of POST /v1/generate). The server answers with "
                       "`{\"type\": \"token\", \"id\", \"text\"}` messages, then `{\"type\": \"done\", "
                       "\"finish_reason\", \"usage\"}`, or `{\"type\": \"error\", \"error\": {...}}` in the "
                       "error shape. `{\"type\": \"cancel\"}` stops the generation upstream. See docs/api.md.",
        "responses": {"101": {"description": "Switching Protocols: the WebSocket is open."},
                      "400": {"description": "Not a WebSocket handshake.", "content": {
                          "application/json": {"schema": "ApiError"}}},
                      "401": {"description": "Missing or wrong API key.", "content": {
                          "application/json": {"schema": "ApiError"}}}}}})


def _not_a_websocket_route(exc: WebsocketMismatch) -> ResponseReturnValue:
    return error_response(InvalidRequest(f"Only {PATH} takes WebSocket connections, and it takes nothing else.",
                                         code="websocket_mismatch"))


@sock.route(PATH)
def generate_ws(ws: Server) -> None:
    """Serve generate requests on this connection until the client closes it (or the worker stops)."""
    Connection(ws, current_app.config["WS_MAX_QUEUED_MESSAGES"],
               current_app.config["MAX_SSE_EVENT_BYTES"]).serve()


def _going_away(sender: object = None) -> None:
    for connection in list(_open_connections):
        connection.going_away()


def parse_message(raw: str | bytes) -> dict[str, Any]:
    """A client message as a JSON object; InvalidRequest when it is not one."""
    try:
        message = json.loads(raw)
    except ValueError:
        raise InvalidRequest("Message is not valid JSON.", code="invalid_json") from None
    if not isinstance(message, dict):
        raise InvalidRequest("Message must be a JSON object.", code="invalid_json")
    return message


def is_cancel(raw: str | bytes) -> bool:
    """True for a {"type": "cancel"} message."""
    try:
        return parse_message(raw).get("type") == "cancel"
    except ApiError:
        return False


class Connection:
    """One client's WebSocket: its queue of requests and the generation running for it."""

    def __init__(self, ws: Server, max_queued: int, max_event_bytes: int) -> None:
        self.ws = ws
        self.pending: deque[str | bytes] = deque()  # messages that arrived during a generation
        self.max_queued = max_queued
        self.max_event_bytes = max_event_bytes
        self.generations = 0
        self.generating = False
        self.stopping = False  # the worker is stopping: close once the running generation ends
        _open_connections.add(self)

    def serve(self) -> None:
        """Answer each message in turn; return when the client has gone or the worker stops."""
        try:
            while not self.stopping:
                if self.queued() > self.max_queued:
                    raise QueueOverflow()
                self.handle(self.pending.popleft() if self.pending else self.ws.receive())
            self.close(CloseReason.GOING_AWAY, "server restarting")
        except QueueOverflow:
            with suppress(ClientDisconnected):
                self.send({"type": "error", "error": RateLimited(
                    f"More than {self.max_queued} messages sent ahead of the running generation "
                    "(setting WS_MAX_QUEUED_MESSAGES).", code="too_many_messages").body()["error"]})
            self.close(CloseReason.POLICY_VIOLATION, "too many messages")
        except (ClientDisconnected, ConnectionClosed):
            return
        except Exception:
            log.exception("unhandled error on %s", PATH)
            with suppress(ClientDisconnected):
                self.send({"type": "error", "error": internal_error().body()["error"]})
        finally:
            _open_connections.discard(self)

    def queued(self) -> int:
        """Messages waiting: ours, and those the WebSocket library has read but not handed over."""
        return len(self.pending) + len(self.ws.input_buffer)

    def going_away(self) -> None:
        """The worker stops: close now when idle, else once the running generation has ended."""
        self.stopping = True
        if not self.generating:
            self.close(CloseReason.GOING_AWAY, "server restarting")

    def close(self, reason: int, message: str) -> None:
        """Send a close frame and wake whatever waits on the connection."""
        with suppress(ConnectionClosed, OSError):
            self.ws.close(reason, message)
        self.ws.event.set()  # a receive() waiting for a message sees the connection closed

    def handle(self, raw: str | bytes) -> None:
        """Validate one message and run the generation it asks for; errors go back as messages."""
        request_id = None
        try:
            message = parse_message(raw)
            kind = message.pop("type", "generate")
            if kind == "cancel":
                return  # nothing is running (a cancel that crossed its generation's end)
            if kind != "generate":
                raise ValidationFailed(f"Unknown message type {kind!r}: send a generate request or "
                                       '{"type": "cancel"}.', param="type")
            limits.count_generation()  # as an HTTP request is counted: before its validation
            body = validate(message)
            self.generations += 1
            request_id = f"{current_request_id()}-{self.generations}"
            self.generate(body, request_id)
        except ApiError as exc:
            self.send({"type": "error", "id": request_id, "error": exc.body()["error"]})

    def generate(self, body: dict[str, Any], request_id: str) -> None:
        """Stream one generation as token messages and a last done message (or raise its ApiError)."""
        payload = completion_request(body, resolve_model(body.get("model"), get_upstream()), stream=True)
        exchange = gateway.new_exchange(payload, request_id)
        translator = NativeStreamTranslator()
        response = None
        self.generating = True
        try:
            with failures_recorded(exchange), cancel_on_message(self.ws, self.pending, self.max_queued):
                response = gateway.open_stream(UPSTREAM_PATH, payload, exchange)
                for data in upstream_events(response, exchange, self.max_event_bytes):
                    event = translator.event(data)
                    if event and event.get("text"):
                        self.send({"type": "token", "id": request_id, "text": event["text"]})
            exchange.finish(COMPLETED)
            finish_reason = translator.finish_reason
        except CancelRequested:
            finish_reason = "cancelled"
        finally:
            self.generating = False
            if response is not None:
                response.close()  # a generation cut short: closing makes the upstream abort it
        self.send({"type": "done", "id": request_id, "finish_reason": finish_reason, "usage": usage(exchange)})

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message; ClientDisconnected when the client has gone."""
        try:
            self.ws.send(json.dumps(message))
        except (ConnectionClosed, OSError):
            raise ClientDisconnected() from None


def validate(message: dict[str, Any]) -> dict[str, Any]:
    """A generate request checked by the native API's schema; its 422 when invalid."""
    try:
        loaded: dict[str, Any] = _schema.load(message)
        return loaded
    except ValidationError as exc:
        raise from_validation_messages(422, {"json": exc.messages}) from None


def usage(exchange: Exchange) -> dict[str, int]:
    """The token counts of a finished generation (counted from the stream when it was cut short)."""
    return {"prompt_tokens": exchange.prompt_tokens, "completion_tokens": exchange.completion_tokens,
            "total_tokens": exchange.prompt_tokens + exchange.completion_tokens}


@contextmanager
def cancel_on_message(ws: Server, pending: deque[str | bytes], max_queued: int) -> Iterator[None]:
    """Within this block, a cancel message, the client leaving or a full queue interrupts the current greenlet.

    A watcher greenlet reads the client's messages meanwhile; other messages are queued in
    `pending` for after the generation, at most `max_queued` of them.
    """
    with interruptible() as guard:
        watcher = gevent.spawn(_watch, ws, guard, pending, max_queued)
        try:
            yield
        finally:
            watcher.kill()


def _watch(ws: Server, guard: Guard, pending: deque[str | bytes], max_queued: int) -> None:
    while True:
        try:
            raw = ws.receive()
        except ConnectionClosed:
            guard.interrupt(ClientDisconnected())
            return
        if is_cancel(raw):
            guard.interrupt(CancelRequested())
            return
        pending.append(raw)
        if len(pending) > max_queued:
            guard.interrupt(QueueOverflow())
            return
