"""The usage ledger and durable keys against real gunicorn (2 workers), the simulator, Redis, SQLite and PostgreSQL."""
from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from bench.processes import Gateway, Postgres, Redis, wait_until
from tests.ledger_helpers import fresh_database, ledger_rows, make_key

pytestmark = pytest.mark.integration
ONE_SHOT = {"Connection": "close"}  # each request on a new connection: both workers get some


@pytest.fixture(scope="module")
def postgres(tmp_logs):
    server = Postgres(log=tmp_logs / "postgres.log")
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """An empty database of each kind."""
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return fresh_database(request.param, tmp_path, postgres)


def start_gateway(simulator, database, tmp_logs, **settings):
    return Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2", "SLUICE_DATABASE_URL": database,
                    **settings}, log=tmp_logs / f"ledger-gateway-{time.monotonic_ns()}.log")


def complete(gateway, key=None, stream=False, max_tokens=8, prompt="count the tokens here"):
    headers = {**ONE_SHOT, **({"Authorization": f"Bearer {key}"} if key else {})}
    body = {"model": "sim-model", "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return requests.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=30, stream=stream)


def usage_of(response) -> dict:
    """The usage a response reported (the last event's, for a stream)."""
    if not response.headers["Content-Type"].startswith("text/event-stream"):
        return response.json()["usage"]
    usage = None
    for line in response.iter_lines():
        if line.startswith(b"data: {") and b'"usage": {' in line.replace(b'"usage":{', b'"usage": {'):
            usage = __import__("json").loads(line[6:])["usage"]
    return usage


def test_n_requests_give_n_rows_with_the_upstreams_tokens_and_a_stop_flushes(simulator, database, tmp_logs):
    gateway = start_gateway(simulator, database, tmp_logs)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: complete(gateway, stream=i % 2 == 1, max_tokens=3 + i % 5), range(40)))
        usages = [usage_of(r) for r in replies]
    finally:
        gateway.stop()  # at once: the rows still buffered are written by the stopping workers
    rows = ledger_rows(database)
    assert len(rows) == 40 and all(r.status_code == 200 for r in replies)
    assert sorted((u["prompt_tokens"], u["completion_tokens"]) for u in usages) == sorted(
        (row["prompt_tokens"], row["completion_tokens"]) for row in rows)
    assert {row["outcome"] for row in rows} == {"completed"} and {row["stream"] for row in rows} == {True, False}
    assert all(row["usage_reported"] and row["replica"] == simulator.url for row in rows)
    assert all(row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["duration_ms"] for row in rows if row["stream"])
    assert {row["route"] for row in rows} == {"/v1/completions"}


def test_refused_and_cancelled_generations_each_get_their_row(simulator, tmp_path, tmp_logs):
    database = fresh_database("sqlite", tmp_path)
    key = make_key(database, "tight", max_concurrent=1)
    gateway = start_gateway(simulator, database, tmp_logs, SLUICE_WORKERS="1")  # no Redis: the cap is per worker
    statuses = []

    def short() -> int:
        statuses.append(complete(gateway, key).status_code)
        return statuses[-1]
    try:
        long = complete(gateway, key, stream=True, max_tokens=200)  # holds the key's one slot
        assert long.raw.read(6) == b"data: "  # begun (iter_lines' generator, dropped, would close it)
        assert short() == 429
        long.close()  # the client leaves mid-stream: cancelled, its relayed tokens counted
        wait_until(lambda: short() == 200, 10, "slot released")
        # Refused before admission (unknown model): no generation, no row.
        unknown_model = requests.post(gateway.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                                      json={"model": "no-such-model", "prompt": "x", "max_tokens": 2}, timeout=10)
        assert unknown_model.status_code == 404
        time.sleep(2.5)  # a batch is written every second
        rows = ledger_rows(database)
    finally:
        gateway.stop()
    by_outcome = {}
    for row in rows:
        by_outcome.setdefault(row["outcome"], []).append(row)
    assert [r["error_code"] for r in by_outcome["refused"]] == ["concurrency_limit_exceeded"] * statuses.count(429)
    assert all(r["status"] == 429 and r["prompt_tokens"] == r["completion_tokens"] == 0 for r in by_outcome["refused"])
    [cancelled] = by_outcome["cancelled"]
    assert cancelled["status"] == 499 and cancelled["completion_tokens"] >= 1 and cancelled["key_name"] == "tight"
    assert not cancelled["usage_reported"] and cancelled["prompt_tokens"] >= 1, "the prompt's estimate, as settled"
    assert len(by_outcome["completed"]) == 1 and len(rows) == len(statuses) + 1


def test_budget_holds_across_two_workers_and_survives_redis_restarted_empty(simulator, tmp_path, tmp_logs):
    database = fresh_database("sqlite", tmp_path)
    redis_server = Redis(log=tmp_logs / "budget-redis.log")
    budget = 400
    key = make_key(database, "capped", budget_tokens=budget, budget_period="day")
    gateway = start_gateway(simulator, database, tmp_logs, SLUICE_REDIS_URL=redis_server.url)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: complete(gateway, key, max_tokens=10), range(60)))
        passed = [r for r in replies if r.status_code == 200]
        refused = [r for r in replies if r.status_code == 429]
        assert len(passed) + len(refused) == 60 and passed and refused
        error = refused[0].json()["error"]
        assert error["code"] == "budget_exceeded"
        assert 0 < int(refused[0].headers["Retry-After"]) <= 86400
        spent = sum(r.json()["usage"]["total_tokens"] for r in passed)
        assert spent <= budget
        wait_until(lambda: sum(r["prompt_tokens"] + r["completion_tokens"] for r in ledger_rows(database)) == spent,
                   10, "the ledger agrees with the budget")

        redis_server.stop()  # Redis comes back empty: no key, no count
        redis_server = Redis(port=redis_server.port, log=tmp_logs / "budget-redis-2.log")
        assert not redis_server.client.keys("*")
        after = complete(gateway, key, max_tokens=10)
        assert after.status_code == 429 and after.json()["error"]["code"] == "budget_exceeded", \
            "the key still works (401 would mean it was lost) and its spending was re-read from the ledger"
    finally:
        gateway.stop()
        redis_server.stop()


@pytest.mark.parametrize("announced", [False, True], ids=["database-poll", "redis-pubsub"])
def test_a_revocation_reaches_both_workers_within_a_second(simulator, tmp_path, tmp_logs, capsys, announced):
    from app.ledger import connect
    from app.ledger.keystore import DatabaseKeyStore

    database = fresh_database("sqlite", tmp_path)
    key = make_key(database, "soon-revoked")
    redis_server = Redis(log=tmp_logs / "revoke-redis.log") if announced else None
    settings = {"SLUICE_REDIS_URL": redis_server.url} if redis_server else {}
    gateway = start_gateway(simulator, database, tmp_logs, **settings)
    try:
        def probe():
            reply = requests.get(gateway.url + "/v1/models", headers={**ONE_SHOT, "Authorization": f"Bearer {key}"},
                                 timeout=5)
            return reply.status_code

        assert all(probe() == 200 for _ in range(10)), "cached in both workers"
        store = DatabaseKeyStore(connect({"DATABASE_URL": database}),
                                 publisher=redis_server.client if redis_server else None)
        revoked_at = time.monotonic()
        store.revoke("soon-revoked")
        wait_until(lambda: all(probe() == 401 for _ in range(6)), 10, "revocation everywhere")
        elapsed = time.monotonic() - revoked_at
        with capsys.disabled():
            print(f"\nrevocation ({'Redis pub/sub' if announced else 'database poll'}) seen by every worker "
                  f"after {elapsed:.2f} s")
        assert elapsed < 3, "within a second, plus a busy machine's margin"
    finally:
        gateway.stop()
        if redis_server:
            redis_server.stop()


def test_a_database_stopped_for_10_s_under_load_loses_no_row(simulator, tmp_path, tmp_logs):
    postgres = Postgres(log=tmp_logs / "outage-postgres.log")
    try:
        database = fresh_database("postgres", tmp_path, postgres)
        gateway = start_gateway(simulator, database, tmp_logs)
        try:
            sent, statuses = 0, []
            deadline = time.monotonic() + 16
            stopped_at = time.monotonic() + 3
            stopped = restarted = False
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                while time.monotonic() < deadline:
                    if not stopped and time.monotonic() >= stopped_at:
                        postgres.stop()
                        stopped = True
                    if stopped and not restarted and time.monotonic() >= stopped_at + 10:
                        postgres.start()
                        restarted = True
                    statuses += [r.status_code for r in pool.map(lambda _: complete(gateway, max_tokens=2), range(4))]
                    sent += 4
            assert statuses.count(200) == sent, "a database away never fails a request"
            wait_until(lambda: len(ledger_rows(database)) >= sent, 30, "buffered rows written")
            assert len(ledger_rows(database)) == sent
        finally:
            gateway.stop()
    finally:
        postgres.remove()
