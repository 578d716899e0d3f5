"""The SSE parser: any split of a valid stream parses to the same events."""
from __future__ import annotations

import time

import pytest

from app.upstream.sse import EventTooLarge, SSEParser

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


def test_an_event_past_the_bound_raises_before_its_end_arrives():
    parser = SSEParser(max_event_bytes=1000)
    assert parser.feed(b"data: " + b"x" * 900 + b"\n\n") == [b"x" * 900]  # within the bound
    parser.feed(b"data: " + b"y" * 900)
    with pytest.raises(EventTooLarge):
        parser.feed(b"y" * 200)  # no end yet, and already past the bound


def test_a_complete_event_past_the_bound_in_one_chunk_raises():
    with pytest.raises(EventTooLarge):
        SSEParser(max_event_bytes=1000).feed(b"data: " + b"z" * 2000 + b"\n\ndata: next\n\n")


def test_one_event_in_thousands_of_small_chunks_is_parsed_in_linear_time():
    # 8 MiB in 1 KiB chunks: re-joining the buffer per chunk copies some 34 GB (tens of seconds);
    # appending once per chunk is milliseconds. The bound is a hundred times either way.
    text = b"t" * (8 * 1024 * 1024)
    payload = b"data: " + text
    parser = SSEParser(max_event_bytes=16 * 1024 * 1024)
    started = time.perf_counter()
    events = [event for i in range(0, len(payload), 1024) for event in parser.feed(payload[i:i + 1024])]
    events += parser.feed(b"\n\n")
    assert time.perf_counter() - started < 3.0
    assert events == [text]
