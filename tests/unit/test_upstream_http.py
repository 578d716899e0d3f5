"""The upstream's HTTP layer: chunked coding undone incrementally, and what one socket read brings kept together."""
from __future__ import annotations

import socket
import threading

import pytest
import urllib3

from app.upstream.http import BodyCut, BodyTooLarge, ChunkedDecoder, Response

BODY = [b"data: 1\n\n", b"data: 22\n\n", b"data: 333\n\n"]
CHUNKED = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in BODY) + b"0\r\n\r\n"


def test_whole_body_in_one_feed():
    decoder = ChunkedDecoder()
    assert decoder.feed(CHUNKED) == b"".join(BODY) and decoder.done


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_split_anywhere(cut):
    decoder = ChunkedDecoder()
    assert decoder.feed(CHUNKED[:cut]) + decoder.feed(CHUNKED[cut:]) == b"".join(BODY) and decoder.done


def test_byte_by_byte_with_extensions_and_trailers():
    raw = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    decoder = ChunkedDecoder()
    assert b"".join(decoder.feed(bytes([b])) for b in raw) == b"hello" and decoder.done


@pytest.mark.parametrize("garbage", [b"zz\r\n", b"5\r\nhelloXX", b"-1\r\n", b"1" * 2000])
def test_broken_framing_is_a_cut_body(garbage):
    with pytest.raises(BodyCut):
        ChunkedDecoder().feed(garbage)


def serve_once(response: bytes, then_close: bool = False) -> tuple[int, threading.Thread]:
    """A one-request HTTP server on loopback that sends `response` in a single write (and closes)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            request = b""
            while not request.endswith(b"\r\n\r\n{}"):  # the whole request: unread bytes would make close() a reset
                request += conn.recv(65536)
            conn.sendall(response)
            if not then_close:
                conn.recv(1)  # until the client closes or reuses it

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def streamed(raw: bytes, then_close: bool = False,
             max_body_bytes: int | None = None) -> tuple[urllib3.HTTPConnectionPool, Response, threading.Thread]:
    """A one-connection pool, and the open response of a server that sends `raw` in one write."""
    port, thread = serve_once(raw, then_close)
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False)
    response = Response(pool.urlopen("POST", "/v1/completions", body=b"{}", preload_content=False,
                                     release_conn=False), max_body_bytes)
    return pool, response, thread


JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_body_read_whole_is_bounded_however_it_is_framed(framing):
    body = b'{"text": "' + b"x" * 990 + b'"}'
    head = {"length": b"Content-Length: %d\r\n\r\n" % len(body),
            "chunked": b"Transfer-Encoding: chunked\r\n\r\n",
            "close": b"Connection: close\r\n\r\n"}[framing]
    wire = body if framing != "chunked" else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    for limit, fits in ((len(body), True), (len(body) - 1, False)):
        pool, response, thread = streamed(JSON_HEAD + head + wire, then_close=framing == "close",
                                          max_body_bytes=limit)
        if fits:
            assert response.json() == {"text": "x" * 990} and response.content == body
        else:
            with pytest.raises(BodyTooLarge):
                response.content  # noqa: B018 (the read is what is tested)
        response.close()
        pool.close()
        thread.join(5)


def test_chunks_that_arrived_together_come_out_as_one_piece():
    pool, response, thread = streamed(HEAD + CHUNKED)
    pieces = list(response.iter_content())
    assert pieces == [b"".join(BODY)], "three HTTP chunks of one socket read: one piece"
    response.close()
    assert pool.pool.qsize() == 1 and pool.num_connections == 1  # finished: the connection went back to the pool
    pool.close()
    thread.join(5)


def test_a_reader_that_stops_at_the_last_piece_leaves_the_connection_pooled():
    # The relay stops asking at [DONE]: a body whose end came in the same read must still go
    # back to the pool, or every stream would open a new upstream connection.
    pool, response, thread = streamed(HEAD + CHUNKED)
    assert next(response.iter_content()) == b"".join(BODY)  # not read on to the generator's end
    response.close()
    assert pool.pool.qsize() == 1 and pool.num_connections == 1
    connection = pool.pool.get_nowait()
    assert connection is not None and connection.is_connected  # kept alive, not closed by close()
    connection.close()
    pool.close()
    thread.join(5)


def test_a_body_cut_short_raises():
    pool, response, thread = streamed(HEAD + CHUNKED[:20], then_close=True)
    got = []
    with pytest.raises(BodyCut):
        for piece in response.iter_content():
            got.append(piece)
    assert b"".join(got) == BODY[0] + b"dat"  # what came before the cut is relayed
    response.close()
    pool.close()
    thread.join(5)
