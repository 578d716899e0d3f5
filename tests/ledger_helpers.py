"""Helpers for the ledger's tests: databases to test against, keys made in them, rows read back."""
from __future__ import annotations

import itertools

import sqlalchemy as sa

from app.access.keys import KeyRing
from app.ledger import connect
from app.ledger.database import make_engine
from app.ledger.keystore import DatabaseKeyStore
from app.ledger.tables import ledger, utcnow

_names = itertools.count()


def fresh_database(kind: str, tmp_path, postgres=None) -> str:
    """The URL of an empty database: a SQLite file in tmp_path, or a new database in the test cluster."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'ledger-{next(_names)}.db'}"
    name = f"t{next(_names)}"
    admin = make_engine(postgres.url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres.url.rsplit("/", 1)[0] + "/" + name


def make_key(url: str, name: str, **fields) -> str:
    """Create a key in the database at `url` (migrated first); returns the key."""
    engine = connect({"DATABASE_URL": url})
    try:
        key, _ = KeyRing(None, None, DatabaseKeyStore(engine)).create(name, **fields)
    finally:
        engine.dispose()
    return key


def ledger_rows(url: str) -> list[dict]:
    """Every ledger row, oldest first."""
    engine = make_engine(connect_url(url))
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(sa.select(ledger).order_by(ledger.c.id))]
    finally:
        engine.dispose()


def connect_url(url: str) -> str:
    from app.ledger.database import database_url

    return database_url({"DATABASE_URL": url})


def row(**fields) -> dict:
    """A ledger row with plausible values; `fields` override them."""
    values = {"time": utcnow(), "request_id": "r", "key_name": "alice", "route": "/v1/completions",
              "model": "m", "replica": None, "stream": False, "outcome": "completed", "error_code": None,
              "status": 200, "prompt_tokens": 3, "completion_tokens": 5, "usage_reported": True,
              "ttft_ms": None, "duration_ms": 1.0}
    return {**values, **fields}
