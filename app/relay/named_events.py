"""Streams of named events (the Responses API): `event: response.output_text.delta` then its `data:`.

They are relayed with their names, as they come; they carry no `[DONE]`: the stream ends
with its last event (`response.completed`, `response.incomplete`, `response.failed` or
`error`), whose response holds the usage that token limits count. A failure after the first
byte is sent as an `error` event, the Responses API's own, which also holds our error object.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

from app.errors import ApiError, UpstreamBadResponse
from app.exchange import Exchange
from app.relay.streaming import StreamFormat, UpstreamBody, event_too_large
from app.upstream import errors as upstream_errors
from app.upstream.http import TRANSPORT_ERRORS
from app.upstream.sse import DEFAULT_MAX_EVENT_BYTES, EventBlockParser, EventTooLarge, named_event, split_event

# Events after which the upstream sends nothing more.
FINAL_EVENTS = frozenset((b"response.completed", b"response.incomplete", b"response.failed", b"error"))
ERROR_EVENT = b"error"


def named_upstream_batches(response: UpstreamBody, exchange: Exchange,
                           max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Iterator[list[bytes]]:
    """The upstream events framed for the client (`event:` and `data:`), those of one read together, up to
    the final one; failures as ApiError."""
    parser = EventBlockParser(max_event_bytes)
    try:
        for chunk in response.iter_content(chunk_size=None):
            batch = []
            for block in parser.feed(chunk):
                name, data = split_event(block)
                if name.endswith(b".delta"):
                    exchange.saw_token()
                if name in FINAL_EVENTS:
                    exchange.record_usage(_usage_of(data))
                batch.append(named_event(name or b"message", data))
                if name in FINAL_EVENTS:
                    yield batch
                    return
            if batch:
                yield batch
    except (requests.RequestException, *TRANSPORT_ERRORS) as exc:
        raise upstream_errors.from_exception(exc, exchange.replica or "upstream") from None
    except EventTooLarge as exc:
        raise event_too_large(exc, exchange) from None
    raise UpstreamBadResponse(f"upstream {exchange.replica or 'upstream'} ended the stream before its final "
                              "event (response.completed)", code="upstream_truncated")


def _usage_of(data: bytes) -> Any:
    try:
        event = json.loads(data)
        return event["response"]["usage"]
    except (ValueError, KeyError, TypeError):
        return None


def error_event(exc: ApiError) -> bytes:
    """The Responses API's `error` event (type, code, message, param), with our error object inside."""
    body = exc.body()
    detail = body["error"]
    event = {"type": "error", "code": detail["code"], "message": detail["message"], "param": detail["param"],
             **body}
    return named_event(ERROR_EVENT, json.dumps(event).encode())


def upstream_error(data: bytes) -> ApiError:
    """The gateway's error for an upstream `error` event (its message, in whichever shape it came)."""
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if isinstance(event, dict) and "error" not in event:
        event = {"error": event.get("message") or "unknown error"}
    return upstream_errors.from_event(event if isinstance(event, dict) else {"error": "malformed error event"})


NAMED_EVENTS = StreamFormat(named_upstream_batches, b"", error_event)
