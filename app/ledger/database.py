"""The connection to the system of record: SQLite in the instance folder by default, or SLUICE_DATABASE_URL.

SQLite runs in WAL mode (readers never wait for the writer, workers share one file) with a
busy timeout, so that several gunicorn workers can write to it. PostgreSQL goes through
psycopg 3, which cooperates with gevent once the worker is patched.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

DEFAULT_FILE = "sluice.db"
# Seconds a statement waits for another writer's lock (SQLite) or a connection (PostgreSQL).
BUSY_TIMEOUT = 5
# The batch writer's SQLite connections wait less: SQLite waits for a lock by sleeping, which
# holds up every greenlet of the worker; a batch that finds the database locked is retried.
WRITER_BUSY_TIMEOUT = 0.1
# Seconds to open a PostgreSQL connection: a database that does not answer fails fast, so
# the batch writer retries later instead of hanging.
CONNECT_TIMEOUT = 3


class DatabaseError(RuntimeError):
    """The database cannot be used as configured (bad URL, unknown driver)."""


def instance_folder() -> str:
    """The gateway's instance folder, as Flask computes it for the `app` package."""
    from flask import Flask

    return Flask("app").instance_path


def database_url(settings: Mapping[str, Any], instance_path: str | None = None) -> str:
    """SLUICE_DATABASE_URL, or a SQLite file in the instance folder."""
    if settings["DATABASE_URL"]:
        url = str(settings["DATABASE_URL"])
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            # The driver we ship (psycopg 3), not SQLAlchemy's default (psycopg2, not installed).
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url
    return f"sqlite:///{os.path.join(instance_path or instance_folder(), DEFAULT_FILE)}"


def make_engine(url: str, busy_timeout: float = BUSY_TIMEOUT) -> Engine:
    """An engine for `url`: SQLite with WAL and a busy timeout, or PostgreSQL with short timeouts."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError for a malformed URL
        raise DatabaseError(f"SLUICE_DATABASE_URL is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # NullPool: a connection per use (opening a SQLite file costs microseconds), so that
        # no connection is shared between greenlets.
        engine = create_engine(parsed, poolclass=NullPool,
                               connect_args={"check_same_thread": False, "timeout": busy_timeout})
        event.listen(engine, "connect", lambda dbapi_connection, _: _sqlite_pragmas(dbapi_connection, busy_timeout))
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=4, pool_timeout=BUSY_TIMEOUT,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT})
    raise DatabaseError(f"SLUICE_DATABASE_URL: unsupported database {parsed.get_backend_name()!r} "
                        "(use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/NAME)")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, busy_timeout: float) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # persistent in the file; cheap to repeat
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL's recommended setting: durable at checkpoints
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    cursor.close()

