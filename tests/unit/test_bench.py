"""The benchmark's own arithmetic and parsing: chunked bodies, percentiles, profiles, the published block."""
from __future__ import annotations

import math

import pytest

from bench.httpclient import ChunkedDecoder, parse_head
from bench.profile import STDLIB, aggregate
from bench.report import BEGIN, END, splice
from bench.stats import Spread, histogram, percentile, share_below

BODY = b"data: one\n\n" * 3 + b"data: [DONE]\n\n"
CHUNKED = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:11], BODY[11:30], BODY[30:])) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 5, 17, len(CHUNKED)])
def test_chunked_decoder_reassembles_a_body_split_anywhere(step):
    decoder, out = ChunkedDecoder(), b""
    for start in range(0, len(CHUNKED), step):
        out += decoder.feed(CHUNKED[start:start + step])
    assert out == BODY and decoder.done


@pytest.mark.parametrize("raw, status, length, chunked, close", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12", 200, 12, False, False),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nConnection: close", 200, None, True, True),
    (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain", 503, None, False, True),
])
def test_parse_head(raw, status, length, chunked, close):
    head = parse_head(raw)
    assert (head.status, head.length, head.chunked, head.close) == (status, length, chunked, close)


def test_percentiles_spread_and_histogram():
    values = [0.001 * i for i in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(0.050) and percentile(values, 99) == pytest.approx(0.099)
    assert math.isnan(percentile([], 50)) and share_below(values, 0.0105) == pytest.approx(0.10)
    assert Spread.of([3.0, None, 1.0, 2.0, math.nan]) == Spread(2.0, 1.0, 3.0)
    assert not Spread.of([None]).known
    assert histogram([0.0, 0.0004, 0.0006, 0.5], 0.0005, 4) == [2, 1, 0, 0, 1]


def test_profile_charges_the_standard_library_to_its_caller_and_skips_idle_stacks():
    collapsed = "\n".join([
        "handle (gunicorn/workers/ggevent.py:1);view (app/api/generate.py:9);loads (json/__init__.py:3) 20",
        "handle (gunicorn/workers/ggevent.py:2);write (gunicorn/util.py:2) 20",
        "run (threading.py:1) 10",
        "Hub.run (gevent/hub.py:5) 500",  # waiting in the event loop: not work
        "_WorkerGreenlet.run (gevent/threadpool.py:216);wait (gevent/_threading.py:86) 900",  # idle resolver thread
    ])
    profile = aggregate(collapsed, us_per_unit=100.0)
    assert profile["samples"] == 50
    by_group = {name: (share, us) for name, share, us in profile["by_package"]}
    assert by_group["Sluice (app/)"] == pytest.approx((0.4, 40.0))  # json's time included
    assert by_group["gunicorn"] == pytest.approx((0.4, 40.0)) and by_group[STDLIB] == pytest.approx((0.2, 20.0))
    inclusive = {name: share for name, share, _ in profile["top_inclusive"]}
    assert inclusive["view (app/api/generate.py)"] == pytest.approx(0.4)
    assert "handle (gunicorn/workers/ggevent.py)" not in inclusive, "the call chain under every sample is no cost"


def test_splice_replaces_only_the_generated_block(tmp_path):
    doc = tmp_path / "benchmarks.md"
    splice(doc, f"{BEGIN}\nold figures\n{END}\n")
    doc.write_text("# Benchmarks\n\nWritten by hand.\n\n" + doc.read_text() + "\nWhy a target was missed.\n")
    splice(doc, f"{BEGIN}\nnew figures\n{END}\n")
    text = doc.read_text()
    assert "new figures" in text and "old figures" not in text
    assert text.startswith("# Benchmarks\n\nWritten by hand.") and text.endswith("Why a target was missed.\n")


def test_instruction_counts_send_what_gunicorn_would_pass_the_app():
    from bench.instructions import _sender

    seen = []

    def app(environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["HTTP_AUTHORIZATION"],
                     environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    send = _sender(app, {"Authorization": "Bearer k"})
    assert send() == "200 OK" and send() == "200 OK"
    method, path, authorization, body = seen[-1]
    assert (method, path, authorization) == ("POST", "/v1/completions", "Bearer k")
    assert b'"max_tokens": 16' in body and len(seen) == 2  # a fresh body for each request
