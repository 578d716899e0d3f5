"""What hostile or broken clients get from the gateway under real gunicorn, and that the worker
goes on serving everyone else: clients that leave, trickle their body, send too much, send
what is not JSON, or try to inject headers through the request id.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests

from bench.processes import Gateway, Simulator, wait_until
from bench.worker_probe import settled_holdings, worker_pid

BODY_TIMEOUT = 1.0
MAX_SEQS = 6  # the simulator generates this many at once; the rest wait, as in vLLM's queue


@pytest.fixture(scope="module")
def simulator(tmp_logs):
    sim = Simulator("--itl", "0.05", "--max-num-seqs", str(MAX_SEQS), log=tmp_logs / "simulator.log")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(simulator, tmp_logs, tmp_path_factory):
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_MODEL": "sim-model",
                  "SLUICE_CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT)},
                 log=tmp_logs / "gateway.log", probe_dir=tmp_path_factory.mktemp("probe"))
    gw.worker = worker_pid(gw.proc.pid)
    yield gw
    gw.stop()


def connect(gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=10)


def post_head(path: str = "/v1/generate", length: int | None = None, extra: bytes = b"",
              content_type: bytes = b"application/json") -> bytes:
    """The head of a POST; no length means a chunked body."""
    framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: gateway\r\nContent-Type: " + content_type + b"\r\n"
            + framing + extra + b"\r\n")


def chunked(body: bytes, size: int = 1000) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one Content-Length response."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before a response: {data!r}"
        data += piece
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def ask(gateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(gateway) as sock:
        sock.sendall(request)
        return read_response(sock)


GOOD = json.dumps({"prompt": "one two", "max_tokens": 2}).encode()


# --- clients that leave -------------------------------------------------------------------

def test_clients_leaving_before_the_first_token_and_mid_stream_cancel_upstream(gateway, simulator):
    assert requests.post(gateway.url + "/v1/generate", json={"prompt": "warm", "max_tokens": 1}, timeout=10).ok
    before = settled_holdings(gateway.worker, gateway.probe_dir)
    cancelled = simulator.stats()["cancelled"]
    long = json.dumps({"prompt": "long", "max_tokens": 2000}).encode()
    # Streams first, so that the MAX_SEQS generating ones are streams (relaying tokens) and
    # blocking requests; the last ones wait in the queue: no first token yet.
    paths = ["/v1/generate/stream"] * 4 + ["/v1/generate"] * 2 + ["/v1/generate/stream"] * 2 + ["/v1/generate"] * 2
    socks = []
    for path in paths:
        sock = connect(gateway)
        sock.sendall(post_head(path, len(long)) + long)
        socks.append(sock)
        if path.endswith("stream") and len(socks) <= MAX_SEQS:
            received = b""
            while received.count(b"data: ") < 2:  # mid-stream: tokens have reached the client
                received += sock.recv(4096)
    wait_until(lambda: simulator.stats()["running"] == MAX_SEQS and simulator.stats()["waiting"] == 4, 10,
               "6 generating and 4 queued upstream")
    for sock in socks:
        sock.close()
    wait_until(lambda: simulator.stats()["cancelled"] == cancelled + len(paths), 10, "every generation cancelled")
    wait_until(lambda: simulator.stats()["running"] + simulator.stats()["waiting"] == 0, 5, "upstream idle")
    after = settled_holdings(gateway.worker, gateway.probe_dir)
    assert after.within(before), f"after the disconnects: {after}, before: {before}"


# --- clients that trickle ---------------------------------------------------------------

def test_body_sent_byte_by_byte_times_out_while_the_worker_serves_others(gateway):
    outcome: dict = {}

    def trickle() -> None:
        with connect(gateway) as sock:
            sock.sendall(post_head(length=len(GOOD)))
            started = time.monotonic()
            for byte in GOOD:  # 0.1 s a byte: the whole body would take ~2.5 s
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # the gateway has closed the connection
                time.sleep(0.1)
                sock.setblocking(False)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # an answer came before the body was complete
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            outcome["reply"] = read_response(sock)
            outcome["seconds"] = time.monotonic() - started
            outcome["then"] = sock.recv(1)  # b"": the gateway closed the connection

    slow = threading.Thread(target=trickle)
    slow.start()
    for _ in range(5):  # served while the slow body is being trickled
        assert requests.post(gateway.url + "/v1/generate", json={"prompt": "x", "max_tokens": 2}, timeout=10).ok
    slow.join(30)
    status, headers, body = outcome["reply"]
    assert status == 408 and json.loads(body)["error"]["code"] == "body_timeout"
    assert BODY_TIMEOUT <= outcome["seconds"] < 10
    assert outcome["then"] == b""


# --- bodies over the limit, and bodies that are not what they claim ------------------------

OVER_LIMIT = b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}'  # SLUICE_MAX_BODY_BYTES is 1 MiB


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_over_the_limit_is_413(gateway, framing):
    if framing == "chunked":
        request = post_head() + chunked(OVER_LIMIT, 64 * 1024)
    else:
        request = post_head(length=len(OVER_LIMIT)) + OVER_LIMIT
    status, _, body = ask(gateway, request)
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"


def test_chunked_body_within_the_limit_is_served(gateway):
    status, _, body = ask(gateway, post_head() + chunked(GOOD, 7))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2


HOSTILE = [
    ("invalid UTF-8", b'{"prompt": "caf\xe9 \xff\xfe"}', b"application/json", 400, "invalid_json"),
    ("deeply nested", b"[" * 200_000 + b"]" * 200_000, b"application/json", 400, "invalid_json"),
    ("number of 10,000 digits", b'{"prompt": "x", "seed": ' + b"7" * 10_000 + b"}", b"application/json", 400,
     "invalid_json"),
    ("60,000 fields", json.dumps({f"f{i}": i for i in range(60_000)}).encode(), b"application/json", 422,
     "validation_error"),
    ("truncated JSON", GOOD[:-3], b"application/json", 400, "invalid_json"),
    ("JSON that is not an object", b'"just a string"', b"application/json", 422, "validation_error"),
    ("text/plain", GOOD, b"text/plain", 415, "unsupported_media_type"),
    ("form", b"prompt=hello", b"application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("multipart", b"--b\r\n\r\nhello\r\n--b--\r\n", b"multipart/form-data; boundary=b", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/generate/stream"])
@pytest.mark.parametrize("name, body, content_type, status, code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_body_gets_a_clear_error_never_a_500(gateway, path, name, body, content_type, status, code):
    got, headers, reply = ask(gateway, post_head(path, len(body), content_type=content_type) + body)
    assert (got, json.loads(reply)["error"]["code"]) == (status, code)
    assert headers["content-type"] == "application/json"
    assert len(reply) < 4096, "an error message stays short whatever the body held"


# --- header injection through the request id ---------------------------------------------

SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# (name, raw X-Request-ID header line(s), what happens): "kept" the id is used as sent;
# "replaced" a new id is made; "refused" gunicorn answers 400 before the app runs (its own page).
INJECTIONS = [
    ("second-header", b"X-Request-ID: abc\r\nX-Injected: yes\r\n", "kept"),  # another header, not the id
    ("bare-lf", b"X-Request-ID: abc\nX-Injected: yes\r\n", "refused"),
    ("bare-cr", b"X-Request-ID: abc\rX-Injected: yes\r\n", "refused"),
    ("folded", b"X-Request-ID: abc\r\n X-Injected: yes\r\n", "refused"),  # obsolete line folding
    ("nul", b"X-Request-ID: abc\x00X-Injected: yes\r\n", "refused"),
    ("percent-encoded", b"X-Request-ID: abc%0d%0aX-Injected:%20yes\r\n", "replaced"),
    ("spaces", b"X-Request-ID: abc X-Injected: yes\r\n", "replaced"),
    ("non-ascii", "X-Request-ID: abc\u00e9\u2028X-Injected\r\n".encode(), "replaced"),  # and a line separator
    ("two-ids", b"X-Request-ID: abc\r\nX-Request-ID: def\r\n", "replaced"),
    ("too-long", b"X-Request-ID: " + b"a" * 5000 + b"\r\n", "replaced"),
]


@pytest.mark.parametrize("name, header, outcome", INJECTIONS, ids=[i[0] for i in INJECTIONS])
def test_request_id_cannot_inject_headers(gateway, name, header, outcome):
    status, headers, body = ask(gateway, post_head(length=len(GOOD), extra=header) + GOOD)
    assert "x-injected" not in headers
    if outcome == "refused":
        assert status == 400 and "x-request-id" not in headers
        return
    assert status == 200
    request_id = headers["x-request-id"]
    assert SAFE_ID.fullmatch(request_id)
    assert (request_id == "abc") == (outcome == "kept")
    assert json.loads(body)["id"] == f"cmpl-{request_id}", "the upstream got the same safe id"


def test_nothing_a_client_sent_split_a_log_line(gateway):
    # Runs after the tests above (file order): no log line starts with what a client injected.
    lines = gateway.log_path.read_text(errors="replace").splitlines()
    assert not [line for line in lines if line.lstrip().lower().startswith("x-injected")]
    assert not [line for line in lines if "Traceback" in line]
