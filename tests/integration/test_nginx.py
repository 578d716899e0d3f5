"""The shipped nginx config (nginx/sluice.conf), run for real: TLS in front of two gunicorn gateways."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websocket

from bench.processes import Gateway, free_port, wait_until
from bench.sse_client import StreamResult, stream
from tests.integration.test_websocket import until_end
from tests.nginx import NGINX_DIR, SERVER_NAME, Nginx, nginx_command, upstream_lines, write_config

MiB = 1024 * 1024
ERROR_KEYS = {"message", "type", "param", "code"}


def address(gateway: Gateway) -> str:
    return gateway.url.removeprefix("http://")


def start_gateways(simulator, tmp_logs, name: str) -> list[Gateway]:
    """Two gateways in front of the simulator, each trusting the one proxy in front of it."""
    started: list[Gateway] = []
    try:
        for i in range(2):
            started.append(Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_TRUSTED_PROXIES": "1"},
                                   log=tmp_logs / f"{name}-{i}.log"))
    except BaseException:
        for gateway in started:
            gateway.stop()
        raise
    return started


@pytest.fixture(scope="module")
def gateways(simulator, tmp_logs):
    started = start_gateways(simulator, tmp_logs, "gateway")
    yield started
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def nginx(gateways, tmp_path_factory):
    """nginx with the shipped config in front of both gateways (stopped first: it holds their connections)."""
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), upstream_lines([address(gw) for gw in gateways]))
    yield proxy
    proxy.stop()


def log_lines(gateway: Gateway, containing: str) -> list[str]:
    return [line for line in gateway.log_path.read_text().splitlines() if containing in line]


def upstreams_of(lines: list[str]) -> list[str]:
    """The gateway nginx's access log names for each line (`upstream=host:port`)."""
    return [line.rsplit("upstream=", 1)[1] for line in lines]


def test_shipped_config_passes_nginx_t(tmp_path):
    upstreams = (NGINX_DIR / "sluice" / "upstreams.conf").read_text()
    write_config(tmp_path, upstreams, free_port(), free_port())
    result = subprocess.run(nginx_command(tmp_path, "-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_blocking_and_streaming_through_nginx(nginx, gateways):
    session = nginx.session()
    reply = session.post(nginx.url + "/v1/generate", json={"prompt": "one two", "max_tokens": 8}, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 8

    body = {"prompt": "go", "max_tokens": 25}
    direct = stream(gateways[0].url + "/v1/generate/stream", body)
    proxied = stream(nginx.url + "/v1/generate/stream", body, session=session)
    arrivals = {}
    for name, result in (("direct", direct), ("proxied", proxied)):
        assert result.status == 200 and result.done and len(result.text_events) == 25
        arrivals[name] = [t for e, t in zip(result.events, result.times, strict=True)
                          if isinstance(e, dict) and e.get("text")]
    # 25 tokens 20 ms apart, relayed one by one through nginx rather than collected first...
    assert arrivals["proxied"][-1] - arrivals["proxied"][0] > 0.3
    assert len({round(t, 3) for t in arrivals["proxied"]}) > 15, "tokens arrived in bursts through nginx"
    # ...and the first one not much later than without nginx (generous: TLS handshake, a shared machine).
    assert arrivals["proxied"][0] < arrivals["direct"][0] + 1.0


def test_gateway_sees_the_real_client_address(nginx, gateways):
    # The client comes from 127.0.0.5 and claims to be 203.0.113.9; nginx connects from 127.0.0.1.
    marker = f"address-check-{uuid.uuid4().hex}"
    session = nginx.session(source_address="127.0.0.5")
    reply = session.get(nginx.url + "/healthz", headers={"X-Forwarded-For": "203.0.113.9", "User-Agent": marker},
                        timeout=10)
    assert reply.status_code == 200
    wait_until(lambda: any(log_lines(gw, marker) for gw in gateways), 5, "the gateway's access log line")
    [line] = [line for gw in gateways for line in log_lines(gw, marker)]
    # gunicorn's access log shows REMOTE_ADDR as the app left it: what rate limits key on.
    assert line.split()[0] == "127.0.0.5", line


def test_limits_keyed_on_the_client_address_count_the_real_client(simulator, tmp_path):
    # One worker without keys or Redis: requests are counted exactly, per client address.
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_TRUSTED_PROXIES": "1", "SLUICE_DEFAULT_RPM": "3"},
                 log=tmp_path / "limited.log")
    proxy = None
    try:
        proxy = Nginx(tmp_path / "nginx", upstream_lines([address(gw)]))

        def statuses(source: str, claims: list[str]) -> list[int]:
            session = proxy.session(source_address=source)
            return [session.get(proxy.url + "/v1/models", headers={"X-Forwarded-For": claim}, timeout=10).status_code
                    for claim in claims]

        # 127.0.0.5 claims another address on each request, 127.0.0.6's among them: one budget all the same...
        assert statuses("127.0.0.5", ["203.0.113.1", "127.0.0.6", "198.51.100.7", "127.0.0.6", "203.0.113.2"]) \
            == [200] * 3 + [429] * 2
        # ...and 127.0.0.6 still has the whole of its own.
        assert statuses("127.0.0.6", ["127.0.0.5"] * 4) == [200] * 3 + [429]
        reply = proxy.session(source_address="127.0.0.6").get(proxy.url + "/v1/models", timeout=10)
        assert reply.status_code == 429 and reply.headers["X-RateLimit-Limit"] == "3"
        assert reply.json()["error"]["message"].endswith("reached for this client address; see Retry-After.")
    finally:
        if proxy:
            proxy.stop()
        gw.stop()


def test_websocket_generation_through_nginx(nginx):
    ws = websocket.create_connection(f"wss://127.0.0.1:{nginx.https_port}/v1/generate/ws", host=SERVER_NAME,
                                     sslopt={"ca_certs": str(nginx.ca), "server_hostname": SERVER_NAME}, timeout=10)
    try:
        ends = []
        for tokens in (5, 2):  # two requests on the one upgraded connection
            ws.send(json.dumps({"prompt": "one two three", "max_tokens": tokens}))
            received, end = until_end(ws)
            assert [t["text"] for t in received] == [f" tok{i}" for i in range(1, tokens + 1)]
            ends.append(end)
    finally:
        ws.close()
    assert [(e["type"], e["finish_reason"], e["usage"]) for e in ends] == [
        ("done", "length", {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}) for n in (5, 2)]
    # nginx logs the upgraded request when the connection ends.
    wait_until(lambda: any('"GET /v1/generate/ws HTTP/1.1" 101' in line for line in nginx.access_log()), 5,
               "nginx's log line of the upgrade")


def test_least_conn_sends_new_requests_to_the_idle_gateway(nginx, simulator):
    seen = len(nginx.access_log())
    session = nginx.session()
    with ThreadPoolExecutor(1) as pool:
        long_stream = pool.submit(stream, nginx.url + "/v1/generate/stream", {"prompt": "long", "max_tokens": 150},
                                  60, None, nginx.session())
        wait_until(lambda: simulator.stats()["running"] == 1, 10, "the long stream generating")
        statuses = [session.post(nginx.url + "/v1/generate", json={"prompt": "short", "max_tokens": 2},
                                 timeout=30).status_code for _ in range(4)]
        assert long_stream.result().done
    assert statuses == [200] * 4
    lines = nginx.access_log()[seen:]
    [busy] = upstreams_of([line for line in lines if "/v1/generate/stream" in line])
    short = upstreams_of([line for line in lines if '"POST /v1/generate HTTP' in line])
    # Round robin would have sent two of the four to the busy gateway.
    assert len(short) == 4 and busy not in short


def test_unknown_host_names_are_refused_and_http_goes_to_https(nginx):
    # No certificate for a name that is not ours: the TLS handshake is refused.
    with pytest.raises(requests.exceptions.SSLError):
        nginx.session(server_name="other.example.org").get(nginx.url + "/healthz", timeout=10)
    # Our name in TLS but another in Host: closed without an answer (444).
    with pytest.raises(requests.exceptions.ConnectionError):
        nginx.session().get(nginx.url + "/healthz", headers={"Host": "other.example.org"}, timeout=10)
    plain = f"http://127.0.0.1:{nginx.http_port}/healthz"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(plain, headers={"Host": "other.example.org"}, timeout=10)
    assert sum(" 444 upstream=-" in line for line in nginx.access_log()) == 2
    # Plain HTTP for our name goes to HTTPS, method and body kept...
    reply = requests.get(plain, headers={"Host": SERVER_NAME}, allow_redirects=False, timeout=10)
    assert reply.status_code == 308
    assert reply.headers["Location"] == f"https://{SERVER_NAME}/healthz"
    # ...except certificate challenges, served from the ACME webroot.
    challenge = nginx.prefix / "acme" / ".well-known" / "acme-challenge" / "token-1"
    challenge.parent.mkdir(parents=True, exist_ok=True)
    challenge.write_text("proof")
    reply = requests.get(f"http://127.0.0.1:{nginx.http_port}/.well-known/acme-challenge/token-1",
                         headers={"Host": SERVER_NAME}, allow_redirects=False, timeout=10)
    assert (reply.status_code, reply.text) == (200, "proof")


def test_body_limit_is_the_gateways(nginx):
    session = nginx.session()
    headers = {"Content-Type": "application/json"}
    envelope = len(json.dumps({"prompt": ""}))
    at_limit = json.dumps({"prompt": "x" * (MiB - envelope)})
    assert len(at_limit) == MiB
    # Exactly the limit passes nginx; the gateway then judges the prompt (too long for it).
    reply = session.post(nginx.url + "/v1/generate", data=at_limit, headers=headers, timeout=30)
    assert reply.status_code == 422 and reply.json()["error"]["param"] == "prompt"
    # One byte more is refused by nginx, in the gateway's error shape.
    reply = session.post(nginx.url + "/v1/generate", data=at_limit + " ", headers=headers, timeout=30)
    assert reply.status_code == 413
    assert reply.headers["Content-Type"] == "application/json"
    assert set(reply.json()["error"]) == ERROR_KEYS and reply.json()["error"]["code"] == "body_too_large"


class DyingGateway:
    """Takes a request and closes the connection without an answer, like a gateway that crashed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.methods: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed by stop()
                return
            with conn:
                self.methods.append(conn.recv(65536).split(b" ", 1)[0])

    def stop(self) -> None:
        self.listener.close()


def test_post_that_reached_a_gateway_is_not_retried(gateways, simulator, tmp_path):
    dying = DyingGateway()
    # max_fails=0 keeps both in the rotation, so requests alternate between them.
    proxy = Nginx(tmp_path, upstream_lines([f"127.0.0.1:{dying.port}", address(gateways[0])], "max_fails=0"))
    try:
        session = proxy.session()
        healthz = [session.get(proxy.url + "/healthz", timeout=10).status_code for _ in range(4)]
        before = simulator.stats()["requests_total"]
        replies = [session.post(proxy.url + "/v1/generate", json={"prompt": "once", "max_tokens": 2}, timeout=30)
                   for _ in range(6)]
        generated = simulator.stats()["requests_total"] - before
    finally:
        proxy.stop()
        dying.stop()
    # A GET that met the dying gateway was tried again on the other: idempotent.
    assert healthz == [200] * 4 and b"GET" in dying.methods
    statuses = [reply.status_code for reply in replies]
    failed = [reply for reply in replies if reply.status_code == 502]
    assert dying.methods.count(b"POST") == len(failed) > 0, statuses
    assert all(reply.json()["error"]["code"] == "no_gateway" for reply in failed)
    # Each POST the dying gateway took was not sent on: only the others generated.
    assert statuses.count(200) == generated == 6 - len(failed)


def test_post_is_retried_when_a_gateway_refuses_the_connection(gateways, simulator, tmp_path):
    stopped = f"127.0.0.1:{free_port()}"  # a gateway being restarted: nothing listens
    proxy = Nginx(tmp_path, upstream_lines([stopped, address(gateways[0])], "max_fails=0"))
    try:
        session = proxy.session()
        statuses = [session.post(proxy.url + "/v1/generate", json={"prompt": "safe", "max_tokens": 2},
                                 timeout=30).status_code for _ in range(4)]
        tried = upstreams_of(proxy.access_log())
    finally:
        proxy.stop()
    assert statuses == [200] * 4
    assert any(stopped in line for line in tried), "nginx never tried the stopped gateway"


def run_streams_through(proxy: Nginx, count: int, tokens: int,
                        during: Callable[[], None]) -> tuple[list[StreamResult], list[int]]:
    """Open `count` streams through `proxy`, call `during()`, then send blocking requests until
    the streams end. Returns the streams and the statuses of those requests."""
    body = {"prompt": "in flight", "max_tokens": tokens}
    statuses: list[int] = []
    session = proxy.session()
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(stream, proxy.url + "/v1/generate/stream", body, 60, None, proxy.session())
                   for _ in range(count)]
        during()
        while not all(f.done() for f in futures):
            statuses.append(session.post(proxy.url + "/v1/generate", json={"prompt": "new", "max_tokens": 2},
                                         timeout=30).status_code)
            time.sleep(0.05)
        return [f.result() for f in futures], statuses


def test_hup_reload_finishes_20_streams_and_keeps_serving(nginx, gateways, simulator):
    seen = len(nginx.access_log())
    booted = [len(log_lines(gw, "Booting worker")) for gw in gateways]

    def reload_both() -> None:
        wait_until(lambda: simulator.stats()["running"] == 20, 10, "20 streams generating")
        for gw in gateways:
            os.kill(gw.proc.pid, signal.SIGHUP)

    # Blocking requests follow at once, while new workers boot and the old ones drain.
    streams, statuses = run_streams_through(nginx, 20, 150, reload_both)  # 3 s each
    assert [(s.status, s.done, len(s.text_events)) for s in streams] == [(200, True, 150)] * 20
    assert len(statuses) >= 3 and set(statuses) == {200}, statuses
    wait_until(lambda: all(len(log_lines(gw, "Booting worker")) == n + 1
                           for gw, n in zip(gateways, booted, strict=True)),
               10, "a new worker in each gateway")
    streamed_by = upstreams_of([line for line in nginx.access_log()[seen:] if "/v1/generate/stream" in line])
    assert sorted(set(streamed_by)) == sorted(address(gw) for gw in gateways), "least_conn used one gateway"


def test_stopping_a_gateway_finishes_its_streams(simulator, tmp_logs, tmp_path):
    # A rolling restart stops one gateway at a time (SIGTERM, as systemd does); nginx moves on.
    pair = start_gateways(simulator, tmp_logs, "rolling")
    proxy = Nginx(tmp_path, upstream_lines([address(gw) for gw in pair]))
    try:
        def stop_first() -> None:
            wait_until(lambda: simulator.stats()["running"] == 10, 10, "10 streams generating")
            os.kill(pair[0].proc.pid, signal.SIGTERM)

        streams, statuses = run_streams_through(proxy, 10, 150, stop_first)
        assert [(s.status, s.done, len(s.text_events)) for s in streams] == [(200, True, 150)] * 10
        assert len(statuses) >= 3 and set(statuses) == {200}, statuses
        proxy.stop()  # lets go of its idle connections to the stopping gateway
        assert pair[0].proc.wait(timeout=10) == 0, pair[0].log_tail()
    finally:
        proxy.stop()
        for gateway in pair:
            gateway.stop()
