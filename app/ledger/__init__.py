"""The system of record: API keys, budgets' source and the usage ledger, in SQLite or PostgreSQL.

`init_app` connects (SLUICE_DATABASE_URL, else a SQLite file in the instance folder), brings
the schema to the head migration, and sets up this worker's key cache and ledger writer.
Redis keeps only what may be lost; everything here survives a Redis restarted empty.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.ledger import migrate, queries, recorder
from app.ledger.database import WRITER_BUSY_TIMEOUT, database_url, make_engine
from app.ledger.key_cache import CachedKeyStore
from app.ledger.keystore import DatabaseKeyStore
from app.ledger.tables import utcnow
from app.ledger.writer import BatchWriter

log = logging.getLogger(__name__)

EXTENSION = "sluice.ledger"
PRUNE_EVERY = 600.0  # seconds between two retention passes of a worker


class Ledger:
    """One app's database: the engine, the cached key store, the ledger writer (None when SLUICE_LEDGER=false)."""

    def __init__(self, engine: Engine, keys: CachedKeyStore, writer: BatchWriter | None,
                 retention_days: int = 0, writer_engine: Engine | None = None) -> None:
        self.engine = engine
        self.writer_engine = writer_engine or engine  # SQLite: shorter lock waits (database.py)
        self.keys = keys
        self.writer = writer
        self.retention_days = retention_days
        self.schema_ready = False
        self._pruned_at = 0.0

    def ensure_schema(self) -> bool:
        """Migrate to the head revision if not done yet; False while the database does not answer."""
        if not self.schema_ready:
            try:
                migrate.upgrade(self.engine)
                self.schema_ready = True
            except SQLAlchemyError as exc:
                log.error("database %s unreachable, schema not checked (%s): keys not cached yet are refused "
                          "with 503 and usage rows wait in memory until it answers",
                          self.engine.url.render_as_string(hide_password=True), type(exc).__name__)
        return self.schema_ready

    def tokens_since(self, key_name: str, since: datetime) -> int | None:
        """Tokens the ledger holds for `key_name` since `since` (a budget's seed); None when unreachable."""
        try:
            with self.engine.connect() as connection:
                return queries.tokens_since(connection, key_name, since)
        except SQLAlchemyError as exc:
            log.warning("cannot read the ledger to seed %s's budget (%s): counting from zero for now",
                        key_name, type(exc).__name__)
            return None

    def usage(self, query: queries.UsageQuery) -> list[dict[str, Any]]:
        """The usage summary `query` asks for."""
        with self.engine.connect() as connection:
            return queries.summarise(connection, query)

    def maintain(self) -> None:
        """Between batches: finish the schema if the database was down at start; prune old rows."""
        if not self.ensure_schema() or not self.retention_days:
            return
        if time.monotonic() - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        cutoff = utcnow() - timedelta(days=self.retention_days)
        try:
            removed = queries.prune(self.writer_engine, cutoff)
        except SQLAlchemyError as exc:
            log.warning("ledger retention: pruning failed (%s); retrying later", type(exc).__name__)
            return
        if removed:
            log.info("ledger retention: removed %d rows older than %d days", removed, self.retention_days)


def connect(settings: dict[str, Any], instance_path: str | None = None) -> Engine:
    """An engine for the configured database, its schema at the head migration (for `sluice` commands)."""
    engine = make_engine(database_url(settings, instance_path))
    migrate.upgrade(engine)
    return engine


def init_app(app: Flask) -> None:
    """Connect to the database and set up this worker's key cache and ledger writer."""
    from app.access.shared_state import get_shared_state

    url = database_url(app.config, app.instance_path)
    engine = make_engine(url)
    writer_engine = make_engine(url, busy_timeout=WRITER_BUSY_TIMEOUT) if engine.dialect.name == "sqlite" else engine
    client = get_shared_state(app).client
    keys = CachedKeyStore(DatabaseKeyStore(engine, publisher=client), subscriber=client)
    ledger = Ledger(engine, keys, None, app.config["USAGE_RETENTION_DAYS"], writer_engine)
    if app.config["LEDGER"]:
        ledger.writer = BatchWriter(writer_engine, max_buffered=app.config["LEDGER_BUFFER"],
                                    maintenance=ledger.maintain)
    ledger.ensure_schema()
    app.extensions[EXTENSION] = ledger
    app.extensions[recorder.EXTENSION] = ledger.writer


def get_ledger(app: Flask | None = None) -> Ledger:
    """The app's ledger."""
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]
