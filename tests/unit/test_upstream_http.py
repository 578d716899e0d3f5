"""The upstream's HTTP layer: chunked coding undone incrementally, and what one socket read brings kept together."""
from __future__ import annotations

import socket
import threading

import pytest
import responses
import urllib3

from app.errors import ApiError
from app.upstream import make_client
from app.upstream.http import BodyCut, BodyTooLarge, ChunkedDecoder, Response
from tests.conftest import UPSTREAM

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


@responses.activate
def test_health_checks_model_lists_and_metrics_are_read_within_the_body_bound():
    client = make_client("vllm", UPSTREAM, connect_timeout=1, read_timeout=1, health_timeout=1, pool_size=1,
                         max_body_bytes=1000)
    responses.get(UPSTREAM + "/v1/models", json={"object": "list", "data": [{"id": "m"}]})
    responses.get(UPSTREAM + "/metrics", body="vllm:num_requests_running 1\n", content_type="text/plain")
    responses.get(UPSTREAM + "/health", body=b"")
    assert client.get_json("/v1/models")["data"] == [{"id": "m"}]
    assert client.get_text("/metrics") == "vllm:num_requests_running 1\n"
    client.check_health()

    responses.get(UPSTREAM + "/v1/models", json={"object": "list", "data": [{"id": "m" * 2000}]})
    responses.get(UPSTREAM + "/metrics", body="#" * 2000, content_type="text/plain")
    responses.get(UPSTREAM + "/health", status=500, body=b"x" * 2000)
    for read in (lambda: client.get_json("/v1/models"), lambda: client.get_text("/metrics"), client.check_health):
        with pytest.raises(ApiError) as caught:
            read()
        assert caught.value.code == "upstream_body_too_large"
