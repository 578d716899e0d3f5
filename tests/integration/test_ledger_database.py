"""Migrations and usage summaries on SQLite and on a real PostgreSQL (a throwaway cluster)."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.ledger import connect, migrate, queries
from app.ledger.database import make_engine
from app.ledger.tables import ledger, utcnow
from tests.ledger_helpers import fresh_database, row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    from bench.processes import Postgres

    server = Postgres(log=tmp_path_factory.mktemp("pg") / "postgres.log")
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return fresh_database(request.param, tmp_path, postgres)


def test_migrations_run_on_an_empty_and_on_an_existing_database(url):
    from app.ledger.database import database_url

    engine = make_engine(database_url({"DATABASE_URL": url}))
    migrate.upgrade(engine, "0001")  # a database from before the ledger, with a key in it
    with engine.begin() as connection:
        assert migrate.current_revision(connection) == "0001"
        connection.execute(sa.text("INSERT INTO api_keys (name, sha256, admin, revoked, created, updated) "
                                   "VALUES ('old', 'h', false, false, :t, :t)"), {"t": utcnow()})
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # at the head: nothing to do
    with engine.begin() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision() == "0002"
        assert connection.execute(sa.text("SELECT name FROM api_keys")).scalar_one() == "old"
        connection.execute(sa.insert(ledger), [row()])
        assert connection.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one() == 1


def test_usage_groups_by_key_model_day_and_route(url):
    engine = connect({"DATABASE_URL": url})
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(sa.insert(ledger), [
            row(key_name="alice", model="a", time=now - timedelta(days=1, hours=1)),
            row(key_name="alice", model="b", prompt_tokens=10, completion_tokens=0),
            row(key_name="bob", model="a", route="/v1/chat/completions"),
            row(key_name="bob", time=now - timedelta(days=30)),  # outside the default 7 days
        ])
    with engine.connect() as connection:
        by_key = queries.summarise(connection, queries.UsageQuery.parse(since=None, until=None, by="key", key=None))
        assert by_key == [
            {"key": "alice", "requests": 2, "prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18},
            {"key": "bob", "requests": 1, "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}]
        by_day = queries.summarise(connection, queries.UsageQuery.parse(since="60d", until=None, by="day", key="bob"))
        assert [d["day"] for d in by_day] == [str((now - timedelta(days=30)).date()), str(now.date())]
        by_route = queries.summarise(connection, queries.UsageQuery.parse(since="2d", until=None, by="route",
                                                                          key=None))
        assert [(r["route"], r["requests"]) for r in by_route] == [("/v1/chat/completions", 1),
                                                                    ("/v1/completions", 2)]
        assert queries.tokens_since(connection, "alice", now - timedelta(hours=1)) == 10
