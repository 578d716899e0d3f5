"""The SSE parser: any split of a valid stream parses to the same events."""
from __future__ import annotations

import pytest

from app.upstream.sse import SSEParser

STREAM = (b'data: {"a": 1}\n\n'
          b': a comment line\n\n'
          b'data: {"b": 2}\r\n\r\n'
          b'event: message\ndata: first\ndata: second\n\n'
          b'data:nospace\n\n'
          b'data: [DONE]\n\n')
EVENTS = [b'{"a": 1}', b'{"b": 2}', b"first\nsecond", b"nospace", b"[DONE]"]


def parse_in_pieces(pieces: list[bytes]) -> list[bytes]:
    parser = SSEParser()
    return [event for piece in pieces for event in parser.feed(piece)]


def test_whole_stream_at_once():
    assert parse_in_pieces([STREAM]) == EVENTS


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_any_single_split(cut):
    assert parse_in_pieces([STREAM[:cut], STREAM[cut:]]) == EVENTS


def test_byte_by_byte():
    assert parse_in_pieces([STREAM[i:i + 1] for i in range(len(STREAM))]) == EVENTS


def test_unfinished_event_is_held_back():
    parser = SSEParser()
    assert parser.feed(b'data: {"a": 1}\n') == []
    assert parser.has_pending
    assert parser.feed(b"\n") == [b'{"a": 1}']
    assert not parser.has_pending


def test_crlf_split_between_cr_and_lf():
    assert parse_in_pieces([b"data: x\r", b"\n\r", b"\n"]) == [b"x"]


def test_event_ended_by_lone_carriage_returns_is_complete_at_once():
    # Held back, it would wait for a byte that never comes when the stream ends there.
    assert SSEParser().feed(b"data: [DONE]\r\r") == [b"[DONE]"]
