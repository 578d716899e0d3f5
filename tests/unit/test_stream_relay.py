"""The SSE relay: translation of upstream chunks, splits anywhere, and failures after the first byte."""
from __future__ import annotations

import json
import types

import pytest
import requests
import responses
from werkzeug.test import EnvironBuilder

from app.api.generate import NativeStreamTranslator
from app.exchange import Exchange
from app.relay.streaming import relay
from bench.sse_client import events_of as events
from tests.conftest import UPSTREAM

COMPLETIONS = f"{UPSTREAM}/v1/completions"


def chunk(text: str, finish: str | None = None) -> bytes:
    body = {"id": "cmpl-7", "object": "text_completion", "created": 1, "model": "sim-model",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = (b'data: {"id": "cmpl-7", "object": "text_completion", "created": 1, "model": "sim-model", '
         b'"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}\n\n')
UPSTREAM_STREAM = chunk(" The") + chunk(" sky") + chunk(" is", "length") + USAGE + b"data: [DONE]\n\n"




def stream(client, upstream_body: bytes, **post_kwargs):
    responses.post(COMPLETIONS, body=upstream_body, content_type="text/event-stream", **post_kwargs)
    reply = client.post("/v1/generate/stream", json={"prompt": "the sky", "max_tokens": 3})
    assert reply.status_code == 200
    return reply


@responses.activate
def test_native_events_usage_then_done(client):
    reply = stream(client, UPSTREAM_STREAM)
    assert reply.mimetype == "text/event-stream"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["X-Accel-Buffering"] == "no"
    got = events(reply.data)
    assert got[:3] == [{"id": "cmpl-7", "text": " The", "finish_reason": None},
                       {"id": "cmpl-7", "text": " sky", "finish_reason": None},
                       {"id": "cmpl-7", "text": " is", "finish_reason": "length"}]
    assert got[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert got[3]["finish_reason"] == "length"
    assert got[4] == "[DONE]"
    sent = json.loads(responses.calls[0].request.body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


@responses.activate
def test_request_id_is_forwarded_and_echoed(client):
    responses.post(COMPLETIONS, body=UPSTREAM_STREAM, content_type="text/event-stream")
    reply = client.post("/v1/generate/stream", json={"prompt": "x"}, headers={"X-Request-ID": "abc-123"})
    assert reply.headers["X-Request-ID"] == "abc-123"
    assert responses.calls[0].request.headers["X-Request-ID"] == "abc-123"


@pytest.mark.parametrize("bad_id", ["has space", "a;Set-Cookie=x", "x" * 200, "ü"])
def test_malformed_request_ids_are_replaced(client, bad_id):
    reply = client.get("/healthz", headers={"X-Request-ID": bad_id.encode("utf-8").decode("latin-1")})
    assert reply.headers["X-Request-ID"] != bad_id and len(reply.headers["X-Request-ID"]) == 32


class PiecewiseResponse:
    """A stand-in upstream response whose body arrives in the given pieces."""

    def __init__(self, pieces: list[bytes], then: Exception | None = None) -> None:
        self.pieces, self.then, self.closed = pieces, then, False

    def iter_content(self, chunk_size=None):
        yield from self.pieces
        if self.then:
            raise self.then

    def close(self) -> None:
        self.closed = True


def relay_all(response: PiecewiseResponse) -> list:
    exchange = Exchange("r", "/v1/generate/stream", "m", True, replica="up")
    body = b"".join(relay(response, {}, NativeStreamTranslator(), exchange))
    assert response.closed, "the upstream response must be closed when the relay ends"
    return events(body)


EXPECTED = relay_all(PiecewiseResponse([UPSTREAM_STREAM]))


@pytest.mark.parametrize("cut", range(1, len(UPSTREAM_STREAM), 7))
def test_split_anywhere_relays_the_same_events(cut):
    assert relay_all(PiecewiseResponse([UPSTREAM_STREAM[:cut], UPSTREAM_STREAM[cut:]])) == EXPECTED


def test_byte_by_byte_relays_the_same_events():
    assert relay_all(PiecewiseResponse([bytes([b]) for b in UPSTREAM_STREAM])) == EXPECTED


def assert_ends_with_error(got: list, code: str) -> None:
    assert got[-1] == "[DONE]"
    assert got[-2]["error"]["code"] == code


def test_in_band_upstream_error_event():
    error = b'data: {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}\n\n'
    got = relay_all(PiecewiseResponse([chunk(" a"), error, b"data: [DONE]\n\n"]))
    assert got[0]["text"] == " a"
    assert_ends_with_error(got, "upstream_stream_error")
    assert "engine died" in got[-2]["error"]["message"]


def test_upstream_closing_mid_stream_ends_with_error_event():
    assert_ends_with_error(relay_all(PiecewiseResponse([chunk(" a"), chunk(" b")[:20]])), "upstream_truncated")


def test_connection_reset_mid_stream_ends_with_error_event():
    got = relay_all(PiecewiseResponse([chunk(" a")], then=requests.ConnectionError("reset by peer")))
    assert_ends_with_error(got, "upstream_connection_error")


def test_chunk_cut_short_mid_stream_is_a_truncation_event():
    broken = requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(10 bytes read)")
    assert_ends_with_error(relay_all(PiecewiseResponse([chunk(" a")], then=broken)), "upstream_truncated")


def test_read_timeout_mid_stream_is_an_upstream_timeout_event():
    got = relay_all(PiecewiseResponse([chunk(" a")], then=requests.ConnectionError("Read timed out.")))
    assert_ends_with_error(got, "upstream_timeout")


def test_invalid_json_chunk_ends_with_error_event():
    assert_ends_with_error(relay_all(PiecewiseResponse([chunk(" a"), b"data: {not json\n\n"])), "upstream_bad_event")


@pytest.fixture
def finished_exchanges():
    """Every Exchange that finishes during the test."""
    from app.exchange import finished
    seen = []

    def record(exchange):
        seen.append(exchange)

    finished.connect(record)
    yield seen
    finished.disconnect(record)


def test_completed_stream_records_usage_once(finished_exchanges):
    relay_all(PiecewiseResponse([UPSTREAM_STREAM]))
    [exchange] = finished_exchanges
    assert exchange.outcome == "completed"
    assert (exchange.prompt_tokens, exchange.completion_tokens) == (3, 3)
    assert exchange.ttft_seconds is not None


def test_stream_cut_short_counts_the_tokens_relayed(finished_exchanges):
    relay_all(PiecewiseResponse([chunk(" a"), chunk(" b")], then=requests.ConnectionError("reset")))
    [exchange] = finished_exchanges
    assert exchange.outcome == "upstream_error" and exchange.error_code == "upstream_connection_error"
    assert exchange.completion_tokens == 2


def test_client_closing_the_stream_is_a_cancellation(finished_exchanges):
    events = relay(PiecewiseResponse([chunk(" a"), chunk(" b"), chunk(" c")]), {}, NativeStreamTranslator(),
                   Exchange("r", "/v1/generate/stream", "m", True, replica="up"))
    next(events)
    events.close()  # what gunicorn does when a write to the client fails
    [exchange] = finished_exchanges
    assert exchange.outcome == "client_cancelled" and exchange.completion_tokens == 1


def test_events_that_arrived_together_leave_together_with_their_boundaries():
    from app.api.openai import CompatibleStream

    together, alone = chunk(" a") + chunk(" b") + chunk(" c"), chunk(" d", "length") + USAGE
    response = PiecewiseResponse([together, alone + b"data: [DONE]\n\n"])
    exchange = Exchange("r", "/v1/completions", "m", True, replica="up")
    pieces = list(relay(response, {}, CompatibleStream("m", None, client_wants_usage=True), exchange))
    assert pieces[0] == together, "one write, byte for byte, for the three events of one read"
    assert pieces[1] == alone and pieces[2] == b"data: [DONE]\n\n"
    assert [e["choices"][0]["text"] for e in events(b"".join(pieces)) if isinstance(e, dict) and e["choices"]] == \
        [" a", " b", " c", " d"]
    assert exchange.events_relayed == 5 and exchange.completion_tokens == 3  # every event counted, usage read


def test_an_error_event_in_a_batch_follows_the_events_before_it():
    error = b'data: {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}\n\n'
    got = relay_all(PiecewiseResponse([chunk(" a") + chunk(" b") + error + chunk(" c")]))
    assert [e["text"] for e in got[:2]] == [" a", " b"]
    assert_ends_with_error(got, "upstream_stream_error")
    assert len(got) == 4


@responses.activate
def test_the_server_iterates_the_relay_itself_and_closing_the_body_ends_the_generation(app, finished_exchanges):
    responses.post(COMPLETIONS, body=UPSTREAM_STREAM, content_type="text/event-stream")
    environ = EnvironBuilder(path="/v1/generate/stream", method="POST",
                             json={"prompt": "the sky", "max_tokens": 3}).get_environ()
    body = app(environ, lambda status, headers, exc_info=None: None)
    pieces = iter(body)
    # No wrapper per piece between gunicorn and the relay: each is a Python call per event
    # and a stack frame that every waiting stream keeps.
    assert isinstance(pieces, types.GeneratorType) and pieces.gi_code.co_name == "relay"
    assert b" The" in next(pieces)
    body.close()  # what gunicorn does when the client has gone
    [exchange] = finished_exchanges
    assert exchange.outcome == "client_cancelled" and exchange.status == 499
