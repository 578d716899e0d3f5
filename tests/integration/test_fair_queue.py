"""Replica capacity and the fair queue under real gunicorn (2 workers), real Redis and the simulator.

Each ordering test first fills the capacity with long "blocker" requests, then queues the
requests under test behind them (checked in Redis), so that the order in which they are
answered is the order the queue granted them: orders and bounds are asserted, not timings.
"""
from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import psutil
import pytest
import redis
import requests

from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway, Redis, Simulator, wait_until

SHORT, BLOCKER = 1, 40  # max_tokens: 0.3 s, and 0.3 s + 40 x 0.05 s
KEYS = {"heavy": {}, "light": {}, "w3": {"weight": 3}, "w1": {}, "eq1": {}, "eq2": {}, "eq3": {}, "eq4": {},
        "high": {"priority": "high"}, "low": {"priority": "low"}, "blocker": {}}


@pytest.fixture(scope="module")
def sim(tmp_logs):
    sim = Simulator("--ttft", "0.3", "--itl", "0.05", log=tmp_logs / "fair-simulator.log")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def shared_redis(tmp_logs):
    server = Redis(log=tmp_logs / "fair-redis.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secrets(tmp_logs) -> dict[str, str]:
    ring = KeyRing(FileKeyStore(tmp_logs / "fair-keys.json"), None)
    return {name: ring.create(name, **share)[0] for name, share in KEYS.items()}


def start_gateway(sim: Simulator, server: Redis | None, db: int, tmp_logs, name: str, **settings: str) -> Gateway:
    env = {"SLUICE_UPSTREAM_URL": sim.url, "SLUICE_WORKERS": "2", "SLUICE_KEYS_FILE": str(tmp_logs / "fair-keys.json"),
           **({"SLUICE_REDIS_URL": f"{server.url[:-2]}/{db}"} if server else {}),
           **{f"SLUICE_{k}": v for k, v in settings.items()}}
    return Gateway(env, log=tmp_logs / f"fair-gateway-{name}.log")


@pytest.fixture(scope="module")
def fair(sim, shared_redis, secrets, tmp_logs):
    """Capacity 2, fair order, generous bounds."""
    gw = start_gateway(sim, shared_redis, 1, tmp_logs, "fair", REPLICA_CAPACITY="2", QUEUE_TIMEOUT="30")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def bounded(sim, shared_redis, secrets, tmp_logs):
    """Capacity 1, at most 2 waiting, for at most 1 s."""
    gw = start_gateway(sim, shared_redis, 2, tmp_logs, "bounded", REPLICA_CAPACITY="1", QUEUE_MAX="2",
                       QUEUE_TIMEOUT="1")
    yield gw
    gw.stop()


def queue_size(server: Redis, db: int, what: str) -> int:
    """Tickets holding a slot (`slots`) or waiting (`waiting`) in the gateway's Redis database, leases unexpired."""
    client = redis.Redis.from_url(f"{server.url[:-2]}/{db}")
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    return sum(client.zcount(key, now_ms, "+inf") for key in client.scan_iter(f"sluice:fq:*:{what}"))


def ask(gw: Gateway, secret: str, max_tokens: int = SHORT) -> requests.Response:
    return requests.post(gw.url + "/v1/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=60,
                         json={"model": "sim-model", "prompt": "hi", "max_tokens": max_tokens})


class Crowd:
    """Requests sent from threads; `answered` lists their labels in the order the answers came."""

    def __init__(self) -> None:
        self.answered: list[str] = []
        self.statuses: list[int] = []
        self.errors: list[dict] = []
        self.threads: list[threading.Thread] = []

    def send(self, label: str, call: Callable[[], requests.Response]) -> None:
        def run() -> None:
            try:
                response = call()
            except requests.RequestException:  # its worker was killed
                self.statuses.append(-1)
                return
            if response.status_code != 200:
                self.errors.append({**response.json()["error"], "retry_after": response.headers.get("Retry-After")})
            self.statuses.append(response.status_code)
            self.answered.append(label)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


def behind_blockers(gw: Gateway, server: Redis, db: int, secrets: dict[str, str], capacity: int,
                    batches: list[list[tuple[str, int]]]) -> Crowd:
    """Fill the capacity with blockers, then queue each batch of (key, count) in turn; all answered."""
    crowd = Crowd()
    for _ in range(capacity):
        crowd.send("blocker", lambda: ask(gw, secrets["blocker"], BLOCKER))
    wait_until(lambda: queue_size(server, db, "slots") == capacity, 10, "the blockers holding the capacity")
    queued = 0
    for batch in batches:
        for key, count in batch:
            for _ in range(count):
                crowd.send(key, lambda k=key: ask(gw, secrets[k]))
            queued += count
        wait_until(lambda q=queued: queue_size(server, db, "waiting") == q, 10, f"{queued} requests waiting")
    crowd.join()
    assert crowd.statuses == [200] * len(crowd.statuses)
    crowd.answered = [label for label in crowd.answered if label != "blocker"]
    return crowd


def test_a_light_key_overtakes_a_flood_queued_before_it(fair, shared_redis, secrets):
    crowd = behind_blockers(fair, shared_redis, 1, secrets, 2, [[("heavy", 12)], [("light", 1)]])
    # First come, first served would answer it last (13th); in turns it is among the first.
    assert crowd.answered.index("light") <= 3, crowd.answered


def test_weights_three_to_one_share_the_capacity(fair, shared_redis, secrets):
    crowd = behind_blockers(fair, shared_redis, 1, secrets, 2, [[("w1", 12), ("w3", 12)]])
    first16 = Counter(crowd.answered[:16])
    assert 11 <= first16["w3"] <= 13, crowd.answered  # 12 of 16 exactly in turns; 8 in arrival order


def test_four_equal_keys_take_turns(fair, shared_redis, secrets):
    crowd = behind_blockers(fair, shared_redis, 1, secrets, 2, [[("eq1", 6), ("eq2", 6), ("eq3", 6), ("eq4", 6)]])
    first8 = Counter(crowd.answered[:8])
    assert sorted(first8.values()) in ([2, 2, 2, 2], [1, 2, 2, 3]), crowd.answered


def test_high_priority_goes_before_low_priority_queued_earlier(fair, shared_redis, secrets):
    crowd = behind_blockers(fair, shared_redis, 1, secrets, 2, [[("low", 8)], [("high", 2)]])
    assert crowd.answered[:2] == ["high", "high"], crowd.answered


def test_a_full_queue_refuses_at_once_with_retry_after(bounded, shared_redis, secrets):
    crowd = Crowd()
    crowd.send("blocker", lambda: ask(bounded, secrets["blocker"], BLOCKER))
    wait_until(lambda: queue_size(shared_redis, 2, "slots") == 1, 10, "the blocker holding the slot")
    for _ in range(2):
        crowd.send("waiter", lambda: ask(bounded, secrets["light"]))
    wait_until(lambda: queue_size(shared_redis, 2, "waiting") == 2, 10, "two waiting")
    refused = ask(bounded, secrets["heavy"])
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    crowd.join()
    # The waiters' 1 s ran out behind the blocker's 2.3 s: timed out, with Retry-After too.
    assert sorted(crowd.statuses) == [200, 503, 503]
    assert [(e["code"], int(e["retry_after"]) >= 1) for e in crowd.errors] == [("queue_timeout", True)] * 2
    wait_until(lambda: queue_size(shared_redis, 2, "waiting") + queue_size(shared_redis, 2, "slots") == 0, 10,
               "every slot given back")


def test_a_client_that_leaves_the_queue_is_never_sent_upstream(fair, shared_redis, secrets, sim):
    crowd = Crowd()
    for _ in range(2):
        crowd.send("blocker", lambda: ask(fair, secrets["blocker"], BLOCKER))
    wait_until(lambda: sim.stats()["active"] == 2, 10, "the blockers running upstream")
    before = sim.stats()["requests_total"]
    body = b'{"model": "sim-model", "prompt": "gone", "max_tokens": 1}'
    with socket.create_connection(("127.0.0.1", fair.port)) as leaver:
        leaver.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Authorization: Bearer " + secrets["light"].encode() + b"\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: queue_size(shared_redis, 1, "waiting") == 1, 10, "the request waiting")
    # Gone from the queue while the blockers still run (its timeout is 30 s).
    wait_until(lambda: queue_size(shared_redis, 1, "waiting") == 0, 5, "the ticket leaving with its client")
    assert queue_size(shared_redis, 1, "slots") == 2
    crowd.join()
    assert crowd.statuses == [200, 200]
    assert sim.stats()["requests_total"] == before  # the blocker was already counted; the leaver never went


def test_a_worker_killed_with_9_gives_its_slot_back(bounded, shared_redis, secrets):
    crowd = Crowd()
    crowd.send("long", lambda: ask(bounded, secrets["blocker"], 400))  # 20 s: far longer than the lease
    wait_until(lambda: queue_size(shared_redis, 2, "slots") == 1, 10, "the long request holding the slot")
    for worker in psutil.Process(bounded.proc.pid).children():
        worker.send_signal(signal.SIGKILL)  # the one holding it among them; nothing is released
    began = time.monotonic()
    wait_until(lambda: queue_size(shared_redis, 2, "slots") == 0, 15, "the dead worker's slot expiring")
    assert time.monotonic() - began < 15
    wait_until(lambda: ask(bounded, secrets["light"]).status_code == 200, 15, "a request served again")
    crowd.join()
    assert crowd.statuses == [-1]  # its connection died with the worker


def test_without_redis_each_worker_is_told_its_share(sim, secrets, tmp_logs):
    gw = start_gateway(sim, None, 0, tmp_logs, "no-redis", REPLICA_CAPACITY="4")
    try:
        assert ask(gw, secrets["light"]).status_code == 200
    finally:
        gw.stop()
    log = (tmp_logs / "fair-gateway-no-redis.log").read_text()
    assert log.count(f"each of the 2 workers runs 1/2 of the replicas' capacity ({sim.url}: 4;") == 2, log[-2000:]
