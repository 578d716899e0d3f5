"""The ledger's parts on SQLite: the batch writer's bound, filters, retention, budgets, /v1/usage, `sluice usage`.

(Migrations and summaries on both SQLite and PostgreSQL: tests/integration/test_ledger_database.py.)
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import gevent
import pytest
import sqlalchemy as sa

from app.access.budgets import Budget, MemoryBudgets, budget_of, period_bounds
from app.access.keys import KeyRecord
from app.ledger import connect, migrate, queries
from app.ledger.database import make_engine
from app.ledger.tables import ledger, utcnow
from app.ledger.writer import BatchWriter
from tests.ledger_helpers import row


@pytest.mark.parametrize("raw, param", [("yesterday", "since"), ("7x", "since")])
def test_bad_time_filters_name_the_parameter(raw, param):
    with pytest.raises(queries.QueryError, match=param) as caught:
        queries.UsageQuery.parse(since=raw, until=None, by="key", key=None)
    assert caught.value.param == param


def test_time_filters_take_durations_and_iso_dates():
    now = datetime(2026, 12, 2, 12, 0)
    assert queries.parse_time("36h", "since", now) == datetime(2026, 12, 1, 0, 0)
    assert queries.parse_time("2026-11-01", "since", now) == datetime(2026, 11, 1)
    assert queries.parse_time("2026-11-01T10:00:00+02:00", "since", now) == datetime(2026, 11, 1, 8, 0)
    with pytest.raises(queries.QueryError, match="before"):
        queries.UsageQuery.parse(since="2026-12-02", until="2026-12-01", by="key", key=None)


def test_retention_prunes_old_rows_in_small_batches(tmp_path):
    engine = connect({"DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}"})
    old, recent = utcnow() - timedelta(days=100), utcnow()
    with engine.begin() as connection:
        connection.execute(sa.insert(ledger), [row(time=old)] * 25 + [row(time=recent)] * 5)
    assert queries.prune(engine, utcnow() - timedelta(days=90), batch=10) == 25
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one() == 5


def test_the_writer_keeps_rows_while_the_database_is_away_and_counts_what_it_drops(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'later.db'}"
    engine = make_engine(url)  # no schema yet: every insert fails, as with a database that is down
    writer = BatchWriter(engine, max_buffered=5, interval=0.05)
    for i in range(8):
        writer.add(row(request_id=str(i)))
    gevent.sleep(0.2)  # the background greenlet tries, and fails
    assert len(writer.buffer) == 5 and writer.dropped == 3 and writer.written == 0
    assert "ledger buffer full" in caplog.text and "ledger database unreachable" in caplog.text
    migrate.upgrade(engine)  # the database is back
    gevent.sleep(0.3)
    assert writer.written == 5 and not writer.buffer
    with engine.connect() as connection:
        assert sorted(connection.execute(sa.select(ledger.c.request_id)).scalars()) == ["0", "1", "2", "3", "4"]
    writer.add(row(request_id="last"))
    assert writer.close() and writer.written == 6, "a stopping worker flushes what is buffered"


def test_budget_periods_are_utc_days_and_months():
    now = datetime(2026, 12, 31, 22, 30)
    assert period_bounds("day", now) == (datetime(2026, 12, 31), datetime(2027, 1, 1))
    assert period_bounds("month", now) == (datetime(2026, 12, 1), datetime(2027, 1, 1))
    budget = budget_of(KeyRecord("k", "h", budget_tokens=100, budget_period="day"), now)
    assert budget is not None and budget.seconds_left(now) == 5400
    assert budget_of(KeyRecord("k", "h"), now) is None


def test_memory_budget_is_seeded_from_the_ledger_and_refuses_past_it():
    seeds = []
    counter = MemoryBudgets(lambda name, since: seeds.append((name, since)) or 90)
    now = datetime(2026, 12, 2, 12)
    budget = Budget("k", 100, "day", *period_bounds("day", now))
    assert counter.reserve(budget, 10, now) == (True, 100)
    assert counter.reserve(budget, 1, now) == (False, 100)
    counter.settle(budget, -5)  # the generation used 5 fewer than reserved
    assert counter.reserve(budget, 5, now) == (True, 100)
    assert seeds == [("k", datetime(2026, 12, 2))], "seeded once per period"


def test_usage_endpoint_shows_a_key_its_own_usage_and_an_admin_everyones(make_app, tmp_path):
    from app.access.keys import KeyRing
    from app.ledger.keystore import DatabaseKeyStore

    url = f"sqlite:///{tmp_path / 'u.db'}"
    engine = connect({"DATABASE_URL": url})
    ring = KeyRing(None, None, DatabaseKeyStore(engine))
    alice, _ = ring.create("alice")
    boss, _ = ring.create("boss", admin=True)
    with engine.begin() as connection:
        connection.execute(sa.insert(ledger), [row(key_name="alice"), row(key_name="bob")])
    client = make_app(DATABASE_URL=url).test_client()
    mine = client.get("/v1/usage", headers={"Authorization": f"Bearer {alice}"})
    assert [r["key"] for r in mine.json["data"]] == ["alice"]
    other = client.get("/v1/usage?key=bob", headers={"Authorization": f"Bearer {alice}"})
    assert other.status_code == 403 and other.json["error"]["param"] == "key"
    everyone = client.get("/v1/usage?by=model", headers={"Authorization": f"Bearer {boss}"})
    assert everyone.json["data"] == [{"model": "m", "requests": 2, "prompt_tokens": 6, "completion_tokens": 10,
                                      "total_tokens": 16}]
    assert client.get("/v1/usage").status_code == 401


def test_sluice_usage_prints_json_csv_and_a_table(tmp_path, monkeypatch, capsys):
    from app.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    engine = connect({"DATABASE_URL": url})
    with engine.begin() as connection:
        connection.execute(sa.insert(ledger), [row(), row(model="n")])
    assert main(["usage", "--by", "model", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"model": "m", "requests": 1, "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        {"model": "n", "requests": 1, "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}]
    assert main(["usage", "--format", "csv", "--key", "alice"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "key,requests,prompt_tokens,completion_tokens,total_tokens", "alice,2,6,10,16"]
    assert main(["usage", "--since", "30d"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["TOTAL", "2", "6", "10", "16"]
    assert main(["usage", "--since", "soon"]) == 2
    assert "since must be" in capsys.readouterr().err


def test_sluice_config_masks_the_database_password(monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("SLUICE_DATABASE_URL", "postgresql://sluice:hunter2@db.internal/sluice")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "SLUICE_DATABASE_URL=***" in out and "hunter2" not in out


def test_the_key_cache_serves_from_memory_until_the_key_store_changes(tmp_path):
    from app.access.keys import KeyRing, hash_key
    from app.ledger.key_cache import CachedKeyStore
    from app.ledger.keystore import DatabaseKeyStore

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    store = DatabaseKeyStore(connect({"DATABASE_URL": url}))
    cache = CachedKeyStore(DatabaseKeyStore(make_engine(url)))
    assert not cache.has_keys()
    key, _ = KeyRing(None, None, store).create("carol")  # another process (the CLI) writes
    assert cache.lookup(hash_key("sluice-unknown")) is None
    cache.poll()
    assert cache.has_keys() and cache.lookup(hash_key(key)).name == "carol"
    store.revoke("carol")
    assert not cache.lookup(hash_key(key)).revoked, "cached"
    cache.poll()  # what the watcher does twice a second
    assert cache.lookup(hash_key(key)).revoked
    cache._watcher.kill()
