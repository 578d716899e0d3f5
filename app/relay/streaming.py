"""Relay an upstream SSE response to the client, as the upstream produces it.

`upstream_events` is the one reader of a streaming upstream response (SSE parsing, usage
accounting, transport failures); the SSE relay here and the WebSocket both consume it.
Whatever goes wrong after the first byte is sent as an error event followed by [DONE]:
a stream never just stops. One upstream event larger than SLUICE_MAX_SSE_EVENT_BYTES is
such a failure (upstream_event_too_large): the parser holds at most that much. A client
that leaves ends the relay and closes the upstream.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import requests
from flask import Response

from app.errors import ApiError, UpstreamBadResponse
from app.exchange import CLIENT_CANCELLED, CLIENT_CLOSED_STATUS, COMPLETED, Exchange, failures_recorded
from app.relay.disconnect import ClientCancelled, cancel_on_disconnect
from app.upstream import errors as upstream_errors
from app.upstream.http import TRANSPORT_ERRORS
from app.upstream.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge, SSEParser

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Turns one upstream event's data into bytes for the client (None: send nothing).
EventTransform = Callable[[bytes], "bytes | None"]


class UpstreamBody(Protocol):
    """What the relay reads: a requests.Response, or the pool's Lease standing for one."""

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]: ...

    def close(self) -> None: ...


def relay_response(upstream: UpstreamBody, environ: dict[str, Any], transform: EventTransform,
                   exchange: Exchange, stream_format: StreamFormat | None = None,
                   max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Response:
    """A text/event-stream response relaying `upstream`, which the caller has opened.

    Opening happens before this, in the view, so that failures before the first byte are
    ordinary HTTP errors; from here on they are error events. gunicorn sends each yielded
    piece at once.
    """
    response = RelayedStream(relay(upstream, environ, transform, exchange, stream_format, max_event_bytes),
                             mimetype="text/event-stream", headers=SSE_HEADERS)
    # A generator that never started ignores close(): close the upstream here too.
    response.call_on_close(upstream.close)
    response.call_on_close(lambda: exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS))
    return response


class RelayedStream(Response):
    """A streamed response that gunicorn iterates without werkzeug's wrappers around each piece.

    werkzeug hands a streamed body out inside two layers (ClosingIterator and iter_encoded):
    a Python call each for every event, and interpreter frames on the C stack that the
    greenlet of every stream keeps while it waits for its next event. The relay yields bytes
    already, so gunicorn iterates it directly; closing still runs the response's close callbacks.
    """

    def get_app_iter(self, environ: dict[str, Any]) -> Iterable[bytes]:
        return _DirectBody(self)


class _DirectBody:
    """A WSGI body: iterating it is iterating the response's own generator; close() closes the response."""

    def __init__(self, response: Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        return iter(cast(Iterable[bytes], self._response.response))  # the relay's generator

    def close(self) -> None:
        self._response.close()  # closes the generator, then runs the call_on_close callbacks


def relay(response: UpstreamBody, environ: dict[str, Any], transform: EventTransform,
          exchange: Exchange, stream_format: StreamFormat | None = None,
          max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Iterator[bytes]:
    """Yield the client's SSE bytes for each upstream event; the upstream is closed when done."""
    framing = stream_format or DATA_EVENTS
    try:
        with failures_recorded(exchange), cancel_on_disconnect(environ) as guard:
            for batch in framing.batches(response, exchange, max_event_bytes):
                out, error = _transformed(batch, transform)
                if out:
                    with guard.writing_to_client():
                        yield out
                if error is not None:
                    raise error
        exchange.finish(COMPLETED)
        if framing.ending:
            yield framing.ending
    except ApiError as exc:
        yield framing.error_event(exc)
    except ClientCancelled:
        pass
    finally:
        response.close()


def _transformed(batch: list[bytes], transform: EventTransform) -> tuple[bytes, ApiError | None]:
    """The client's bytes for a batch of events, and the error an event turned out to be (after the
    events before it, which the client still gets)."""
    pieces: list[bytes] = []
    for data in batch:
        try:
            out = transform(data)
        except ApiError as exc:
            return b"".join(pieces), exc
        if out:
            pieces.append(out)
    return b"".join(pieces), None


def upstream_events(response: UpstreamBody, exchange: Exchange,
                    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Iterator[bytes]:
    """The data of each upstream SSE event up to [DONE], noted on `exchange`; failures as ApiError."""
    for batch in upstream_batches(response, exchange, max_event_bytes):
        yield from batch


def upstream_batches(response: UpstreamBody, exchange: Exchange,
                     max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Iterator[list[bytes]]:
    """The data of the upstream SSE events up to [DONE], those of one read together, noted on
    `exchange`; failures as ApiError."""
    parser = SSEParser(max_event_bytes)
    try:
        # Each piece is what the upstream socket held (app/upstream/http.py): no waiting for more.
        for chunk in response.iter_content(chunk_size=None):
            events = parser.feed(chunk)
            done = b"[DONE]" in events
            if done:
                events = events[:events.index(b"[DONE]")]
            for data in events:
                if exchange.saw_event(data):
                    exchange.record_usage(_usage_of(data))
            if events:
                yield events
            if done:
                return
    except (requests.RequestException, *TRANSPORT_ERRORS) as exc:
        raise upstream_errors.from_exception(exc, exchange.replica or "upstream") from None
    except EventTooLarge as exc:
        raise event_too_large(exc, exchange) from None
    raise UpstreamBadResponse(f"upstream {exchange.replica or 'upstream'} ended the stream without [DONE]",
                              code="upstream_truncated")


def event_too_large(exc: EventTooLarge, exchange: Exchange) -> ApiError:
    """The error for an upstream event over MAX_SSE_EVENT_BYTES (the parser stopped buffering it)."""
    return UpstreamBadResponse(f"upstream {exchange.replica or 'upstream'} sent an event larger than "
                               f"{exc.limit} bytes (setting MAX_SSE_EVENT_BYTES)", code="upstream_event_too_large")


def _usage_of(data: bytes) -> Any:
    try:
        return json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return None  # the transform reports the malformed event


@dataclass(frozen=True)
class StreamFormat:
    """How a kind of stream is read from the upstream and ended for the client."""

    # The upstream's events, for the transform, those of one read of the socket together; the
    # third argument bounds one event's bytes.
    batches: Callable[[UpstreamBody, Exchange, int], Iterator[list[bytes]]]
    ending: bytes  # sent after the last event (nothing: b"")
    error_event: Callable[[ApiError], bytes]  # a failure after the first byte, as the stream's last bytes


# Chat and completions: `data:` events up to `data: [DONE]` (see app/relay/named_events.py for the other).
DATA_EVENTS = StreamFormat(upstream_batches, DONE, ApiError.sse_event)
