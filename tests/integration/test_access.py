"""Access control and fairness under real gunicorn (2 gevent workers), real Redis and the simulator."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests
import websocket
from requests.structures import CaseInsensitiveDict

from app.access.keys import FileKeyStore, KeyRing, RedisKeyStore
from bench.processes import BIN, Gateway, Redis, Service, wait_until

# The access log names the worker (pid) that served each request, so tests can tell that
# both workers took part.
PID_LOG = {"GUNICORN_CMD_ARGS": "--access-logformat 'served pid=%(p)s status=%(s)s'"}
SERVED = re.compile(rb"served pid=<(\d+)> status=(\d+)")
PROMPT = {"prompt": "a b c d", "max_tokens": 4}


# Each request on a connection of its own, so that either worker may take it, and closed
# after it: a kept-alive connection would hold a worker's graceful stop until it times out.
ONE_SHOT = {"Connection": "close"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def generate(gw: Gateway, key: str | None, body: dict | None = None) -> requests.Response:
    """One blocking generation on a connection of its own."""
    return requests.post(gw.url + "/v1/generate", json=body or PROMPT,
                         headers={**ONE_SHOT, **(auth(key) if key else {})}, timeout=30)


def burst(gw: Gateway, key: str | None, count: int,
          send: Callable[[], requests.Response] | None = None) -> tuple[list[requests.Response], set[str]]:
    """`count` requests at once; the replies, and the pids of the workers that served them."""
    before = gw.log_path.read_bytes().count(b"served pid=")
    with ThreadPoolExecutor(max_workers=count) as pool:
        replies = list(pool.map(lambda _: send() if send else generate(gw, key), range(count)))
    wait_until(lambda: gw.log_path.read_bytes().count(b"served pid=") >= before + count, 5, "access log")
    served = SERVED.findall(gw.log_path.read_bytes())[before:]
    return replies, {pid.decode() for pid, _ in served}


def both_workers_up(gw: Gateway) -> None:
    """Wait until both workers answer (the first /healthz only proves that one has booted)."""
    def probe() -> bool:
        return len(burst(gw, None, 8, lambda: requests.get(gw.url + "/healthz", headers=ONE_SHOT, timeout=5))[1]) == 2
    wait_until(probe, 30, "both workers")


@pytest.fixture(scope="module")
def stores(redis_server, tmp_logs):
    """Key rings writing to the keys file and to Redis, both read by the gateway."""
    redis_server.client.flushdb()
    file_store = FileKeyStore(tmp_logs / "keys.json")
    return {"file": KeyRing(file_store, None), "redis": KeyRing(None, RedisKeyStore(redis_server.client))}


@pytest.fixture(scope="module")
def gateway(simulator, redis_server, stores, tmp_logs):
    """Two gevent workers with keys in a file and in Redis; a short token window for the tests."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2", "SLUICE_REDIS_URL": redis_server.url,
                  "SLUICE_KEYS_FILE": str(stores["file"].file.path), "SLUICE_TOKEN_WINDOW": "3", **PID_LOG},
                 log=tmp_logs / "access-gateway.log")
    both_workers_up(gw)
    yield gw
    gw.stop()


def test_exactly_n_of_n_plus_k_pass_a_per_key_limit_across_both_workers(gateway, stores):
    key, _ = stores["redis"].create("rpm-ten", rpm=10)
    replies, workers = burst(gateway, key, 25)
    assert sorted(r.status_code for r in replies) == [200] * 10 + [429] * 15
    assert len(workers) == 2, "both workers served, sharing one count"
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["X-RateLimit-Limit"] == "10" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(refused.headers["Retry-After"]) <= 61
    assert int(refused.headers["X-RateLimit-Reset"]) > time.time()
    assert {r.headers["X-RateLimit-Limit"] for r in replies} == {"10"}


def test_a_key_without_its_own_limit_is_not_limited_by_another_keys(gateway, stores):
    key, _ = stores["file"].create("no-rpm")
    replies, _ = burst(gateway, key, 12)
    assert [r.status_code for r in replies] == [200] * 12
    assert "X-RateLimit-Limit" not in replies[0].headers  # SLUICE_DEFAULT_RPM is 0: no limit


@pytest.mark.parametrize("store", ["file", "redis"])
def test_a_revoked_key_is_refused_in_every_worker(gateway, stores, store):
    key, _ = stores[store].create(f"to-revoke-{store}")
    replies, workers = burst(gateway, key, 16)
    assert [r.status_code for r in replies] == [200] * 16 and len(workers) == 2
    assert stores[store].revoke(f"to-revoke-{store}")
    if store == "redis":
        # Each worker caches the records it read from Redis for KEY_CACHE_SECONDS: within 1 s
        # of the revocation every worker refuses the key. (The file is re-read on its next request.)
        time.sleep(1.0)
    replies, workers = burst(gateway, key, 16)
    assert [r.status_code for r in replies] == [401] * 16 and len(workers) == 2


@pytest.fixture(scope="module")
def table_keys(stores):
    """A valid and a revoked key in each store."""
    valid = {name: ring.create(f"table-{name}")[0] for name, ring in stores.items()}
    revoked = {name: ring.create(f"table-revoked-{name}")[0] for name, ring in stores.items()}
    for name, ring in stores.items():
        ring.revoke(f"table-revoked-{name}")
    return valid, revoked


def _one_char_off(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def _case_flipped(key: str) -> str:
    return key[:7] + key[7:].swapcase()  # after the "sluice-" prefix


AUTH_TABLE = {
    "no header": lambda valid, revoked: ({}, {}),
    "wrong scheme": lambda valid, revoked: ({"Authorization": f"Basic {valid}"}, {}),
    "no scheme": lambda valid, revoked: ({"Authorization": valid}, {}),
    "empty key": lambda valid, revoked: ({"Authorization": "Bearer "}, {}),
    "revoked key": lambda valid, revoked: (auth(revoked), {}),
    "key in the query string": lambda valid, revoked: ({}, {"api_key": valid}),
    "key in the query string and header": lambda valid, revoked: (auth(valid), {"key": valid}),
    "key differing by case": lambda valid, revoked: (auth(_case_flipped(valid)), {}),
    "key differing by one character": lambda valid, revoked: (auth(_one_char_off(valid)), {}),
    "key with a character more": lambda valid, revoked: (auth(valid + "x"), {}),
}


# Every surface a key opens: the native API, the OpenAI-compatible one, and the WebSocket
# handshake (as websocket-client makes it).
HTTP_SURFACES = {
    "generate": ("POST", "/v1/generate", PROMPT),
    "completions": ("POST", "/v1/completions", {"model": "sim-model", "prompt": "a b c d", "max_tokens": 4}),
    "chat": ("POST", "/v1/chat/completions",
             {"model": "sim-model", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 4}),
    "models": ("GET", "/v1/models", None),
}
SURFACES = [*HTTP_SURFACES, "websocket"]


def call(gw: Gateway, surface: str, headers: dict[str, str],
         params: dict[str, str]) -> tuple[int, CaseInsensitiveDict, str]:
    """One request to `surface`: its status (101 for an accepted WebSocket handshake), headers and body."""
    if surface == "websocket":
        url = gw.url.replace("http://", "ws://") + "/v1/generate/ws" + (f"?{urlencode(params)}" if params else "")
        try:
            websocket.create_connection(url, header=headers, timeout=10).close()
        except websocket.WebSocketBadStatusException as exc:
            return exc.status_code, CaseInsensitiveDict(exc.resp_headers), (exc.resp_body or b"").decode()
        return 101, CaseInsensitiveDict(), ""
    method, path, body = HTTP_SURFACES[surface]
    reply = requests.request(method, gw.url + path, json=body, headers={**ONE_SHOT, **headers}, params=params,
                             timeout=10)
    return reply.status_code, reply.headers, reply.text


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("store", ["file", "redis"])
@pytest.mark.parametrize("case", list(AUTH_TABLE))
def test_auth_table_all_refused(gateway, table_keys, store, case, surface):
    valid, revoked = table_keys
    status, headers, body = call(gateway, surface, *AUTH_TABLE[case](valid[store], revoked[store]))
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Bearer realm="sluice"')
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "authentication_error"
    assert valid[store] not in body


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("store", ["file", "redis"])
def test_auth_table_control_the_valid_key_passes(gateway, table_keys, store, surface):
    valid, _ = table_keys
    status, _, _ = call(gateway, surface, auth(valid[store]), {})
    assert status == (101 if surface == "websocket" else 200)


def test_probes_need_no_key(gateway):
    assert requests.get(gateway.url + "/healthz", timeout=5).ok


def hold_stream(gw: Gateway, key: str | None) -> requests.Response:
    """A long stream under way for `key`, on its own connection, held open until it is closed."""
    reply = requests.post(gw.url + "/v1/generate/stream", json={"prompt": "long", "max_tokens": 2000},
                          headers=auth(key) if key else {}, stream=True, timeout=30)
    assert reply.status_code == 200
    # The generation has begun. (Not through iter_content: dropping that generator closes the connection.)
    assert reply.raw.read(6) == b"data: "
    return reply


def test_a_key_at_its_concurrency_cap_gets_429_while_another_key_is_served(gateway, stores):
    capped, _ = stores["redis"].create("two-at-once", max_concurrent=2)
    other, _ = stores["file"].create("someone-else", max_concurrent=2)
    held = [hold_stream(gateway, capped) for _ in range(2)]
    try:
        refused = generate(gateway, capped)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert generate(gateway, other).status_code == 200
    finally:
        held.pop().close()
    # The client that left freed its slot (released when its relay ended).
    wait_until(lambda: generate(gateway, capped).status_code == 200, 5, "slot released")
    held.pop().close()


def test_spent_tokens_get_429_until_the_window_moves(gateway, stores):
    key, _ = stores["redis"].create("hundred-tokens", tpm=100)
    body = {"prompt": "w " * 40, "max_tokens": 1}  # estimated 21 tokens, really 41 (settled after)
    first = generate(gateway, key, body)
    assert first.status_code == 200 and first.headers["X-RateLimit-Limit-Tokens"] == "100"
    assert generate(gateway, key, body).status_code == 200
    refused = generate(gateway, key, body)  # 82 spent + 21 estimated > 100
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "token_limit_exceeded"
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 3
    time.sleep(wait)
    assert generate(gateway, key, body).status_code == 200


def test_a_stream_cut_by_the_client_still_counts_its_tokens(gateway, stores, simulator):
    key, _ = stores["redis"].create("cut-stream", tpm=1000)
    cancelled = simulator.stats()["cancelled"]
    session = requests.Session()
    reply = session.post(gateway.url + "/v1/generate/stream", json={"prompt": "count me", "max_tokens": 500},
                         headers=auth(key), stream=True, timeout=30)
    assert reply.headers["X-RateLimit-Remaining-Tokens"] == str(1000 - 502)  # 2 (prompt) + 500 reserved
    received = 0
    for chunk in reply.iter_content(chunk_size=None):
        received += chunk.count(b'"text"')
        if received >= 20:
            break
    session.close()  # the client leaves mid-stream
    # The relay settles the tokens before it closes the upstream, which the simulator counts.
    wait_until(lambda: simulator.stats()["cancelled"] > cancelled, 5, "upstream cancelled")
    probe = generate(gateway, key, {"prompt": "x", "max_tokens": 1})  # reserves 2 more
    charged = 1000 - int(probe.headers["X-RateLimit-Remaining-Tokens"]) - 2
    assert 2 + received <= charged < 502, "what was relayed counts: not the reservation, not nothing"


@pytest.fixture
def small_gateway(simulator, tmp_path):
    """One worker that runs 2 generations at once and lets 1 more wait up to 3 s; no keys."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_MAX_IN_FLIGHT": "2", "SLUICE_ADMISSION_QUEUE": "1",
                  "SLUICE_ADMISSION_TIMEOUT": "3"}, log=tmp_path / "small-gateway.log")
    yield gw
    gw.stop()


def test_gateway_full_is_503_with_a_bounded_timed_queue(small_gateway, simulator):
    gw = small_gateway
    assert "WITHOUT authentication, on loopback only" in gw.log_path.read_text()
    held = [hold_stream(gw, None) for _ in range(2)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        queued = pool.submit(generate, gw, None)
        time.sleep(0.5)  # let it reach the queue
        full = generate(gw, None)
        assert full.status_code == 503 and full.json()["error"]["code"] == "gateway_full"
        assert full.headers["Retry-After"] == "3"
        held.pop().close()  # a slot frees: the queued request goes in
        assert queued.result(timeout=10).status_code == 200
    held.append(hold_stream(gw, None))
    timed_out = generate(gw, None)  # nothing frees within 3 s
    assert timed_out.status_code == 503 and timed_out.json()["error"]["code"] == "gateway_busy"
    for stream in held:
        stream.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_stopped_mid_run(simulator, tmp_path, mode):
    redis = Redis(log=tmp_path / "redis.log")
    keys_file = tmp_path / "keys.json"
    key, _ = KeyRing(FileKeyStore(keys_file), None).create("k", rpm=3, tpm=100_000, max_concurrent=10)
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2", "SLUICE_REDIS_URL": redis.url,
                  "SLUICE_KEYS_FILE": str(keys_file), "SLUICE_REDIS_FAILURE_MODE": mode, **PID_LOG},
                 log=tmp_path / "gateway.log")
    try:
        both_workers_up(gw)
        assert generate(gw, key).status_code == 200
        in_flight = hold_stream(gw, key)
        redis.stop()
        replies, _ = burst(gw, key, 10)
        statuses = [r.status_code for r in replies]
        in_flight.close()  # its release meets a Redis that is gone: no harm done
        if mode == "open":
            # Per-process limits meanwhile: each of the 2 workers lets through at most 3.
            assert set(statuses) <= {200, 429} and 3 <= statuses.count(200) <= 6, statuses
            assert "Redis unreachable" in gw.log_path.read_text()
        else:
            assert statuses == [503] * 10
            assert all(r.json()["error"]["code"] == "redis_unavailable" and r.headers["Retry-After"] == "1"
                       for r in replies)
            redis = Redis(port=redis.port, log=tmp_path / "redis-again.log")
            wait_until(lambda: generate(gw, key).status_code == 200, 10, "service after Redis returned")
        assert generate(gw, None).status_code == 401, "no key is never let in"
        assert requests.get(gw.url + "/healthz", timeout=5).ok
        assert b"status=500" not in gw.log_path.read_bytes()
    finally:
        gw.stop()
        redis.stop()


def test_no_keys_on_a_public_address_refuses_to_start(tmp_path):
    gw = Service("gateway", [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"],
                 env={"SLUICE_BIND": "0.0.0.0:0"}, log=tmp_path / "refused.log")
    assert gw.proc.wait(timeout=30) != 0
    assert "SLUICE_ALLOW_UNAUTHENTICATED=true" in gw.log_tail()


def test_a_burst_waits_for_the_workers_few_redis_connections_instead_of_opening_one_each(simulator, tmp_path):
    redis = Redis(log=tmp_path / "redis.log")
    keys_file = tmp_path / "keys.json"
    key, _ = KeyRing(FileKeyStore(keys_file), None).create("k", rpm=1000, tpm=1_000_000, max_concurrent=100)
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_REDIS_URL": redis.url,
                  "SLUICE_KEYS_FILE": str(keys_file), "SLUICE_REDIS_MAX_CONNECTIONS": "3", **PID_LOG},
                 log=tmp_path / "gateway.log")
    try:
        assert generate(gw, key).status_code == 200
        opened_before = redis.client.info("stats")["total_connections_received"]
        replies, _ = burst(gw, key, 40)
        assert [r.status_code for r in replies] == [200] * 40, "every request served: waiting is not an outage"
        opened = redis.client.info("stats")["total_connections_received"] - opened_before
        assert opened <= 3, f"{opened} connections opened for 40 requests at once"
        assert "Redis unreachable" not in gw.log_path.read_text()
    finally:
        gw.stop()
        redis.stop()
