"""Alembic migrations, run programmatically (no alembic.ini): at each worker's start and by `sluice db upgrade`.

Several workers (and hosts) start at once: one migrates while the others wait on a lock
(PostgreSQL: an advisory lock; SQLite: a lock file beside the database), then find the
schema at the head revision and do nothing.
"""
from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed number: the key of PostgreSQL's advisory lock for migrations.
_ADVISORY_LOCK = 0x51_1CE


def alembic_config() -> Config:
    """Alembic's configuration, built in code: the scripts ship inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to `revision`, once across every process that calls this at once."""
    cfg = alembic_config()
    with _migration_lock(engine), engine.begin() as connection:
        if revision == "head" and current_revision(connection) == head_revision():
            return
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK})
            try:
                yield
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK})
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield
