"""API keys in the database, the system of record: the same interface as the keys file (app/access/keys.py).

Every change bumps `key_store_version` in its own transaction, and, with Redis configured,
is announced on CHANNEL; workers' caches (app/ledger/key_cache.py) drop what they hold on
either signal. `import_keys` moves the keys of the file and of Redis here, once.
"""
from __future__ import annotations

import logging
from dataclasses import fields
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.access.keys import FileKeyStore, KeyRecord, KeyStoreError, RedisKeyStore
from app.ledger.tables import api_keys, key_store_version, utcnow

log = logging.getLogger(__name__)

CHANNEL = "sluice:keys-changed"  # Redis pub/sub: a key was created, changed or revoked
_RECORD_FIELDS = frozenset(f.name for f in fields(KeyRecord))
_COLUMNS = frozenset(c.name for c in api_keys.columns)


def record_from_row(row: Any) -> KeyRecord:
    """A KeyRecord from a row of api_keys (columns the record does not know are left out)."""
    values = {name: value for name, value in row._mapping.items() if name in _RECORD_FIELDS}
    created = values.get("created")
    values["created"] = created.isoformat(timespec="seconds") + "+00:00" if isinstance(created, datetime) else ""
    return KeyRecord(**values)


def row_from_record(record: KeyRecord) -> dict[str, Any]:
    """The api_keys row of a record (record fields the table has no column for are left out)."""
    values = {name: getattr(record, name) for name in _RECORD_FIELDS & _COLUMNS}
    try:
        created = datetime.fromisoformat(record.created).replace(tzinfo=None) if record.created else utcnow()
    except ValueError:
        created = utcnow()
    return {**values, "created": created, "updated": utcnow()}


class DatabaseKeyStore:
    """Key records in the database; `publisher` (a Redis client) announces changes to every worker."""

    kind = "database"

    def __init__(self, engine: Engine, publisher: redis.Redis | None = None) -> None:
        self.engine = engine
        self.publisher = publisher

    def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record whose hash is `key_hash` (one indexed read)."""
        with self.engine.connect() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.sha256 == key_hash)).first()
        return None if row is None else record_from_row(row)

    def records(self) -> list[KeyRecord]:
        """Every record, by name."""
        with self.engine.connect() as connection:
            return [record_from_row(row) for row in connection.execute(select(api_keys).order_by(api_keys.c.name))]

    def add(self, record: KeyRecord) -> None:
        """Store a record; the name (and hash) must be new."""
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(api_keys).values(**row_from_record(record)))
                _bump(connection)
        except IntegrityError:
            raise KeyStoreError(f"a key named {record.name!r} already exists in the database") from None
        self._announce()

    def revoke(self, name: str) -> bool:
        """Mark the key `name` revoked; False when there is none."""
        return self.update(name, revoked=True) is not None

    def update(self, name: str, **changes: Any) -> KeyRecord | None:
        """Change fields of the key `name`; its new record, None when there is none."""
        unknown = set(changes) - (_RECORD_FIELDS & _COLUMNS)
        if unknown:
            raise KeyStoreError(f"cannot change {', '.join(sorted(unknown))} of a key")
        with self.engine.begin() as connection:
            done = connection.execute(update(api_keys).where(api_keys.c.name == name)
                                      .values(**changes, updated=utcnow()))
            if not done.rowcount:
                return None
            _bump(connection)
            row = connection.execute(select(api_keys).where(api_keys.c.name == name)).one()
        self._announce()
        return record_from_row(row)

    def version(self) -> tuple[int, int]:
        """(the key store's version, how many keys it holds): a change of either means caches are stale."""
        statement = select(key_store_version.c.version, select(api_keys.c.name).exists())  # one round trip
        with self.engine.connect() as connection:
            row = connection.execute(statement).first()
        return (0, 0) if row is None else (int(row[0]), int(bool(row[1])))

    def _announce(self) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(CHANNEL, b"changed")
        except redis.RedisError as exc:  # the workers' database poll catches up within seconds
            log.warning("could not announce a key change on Redis (%s): workers see it at their next poll", exc)


def _bump(connection: Connection) -> None:
    connection.execute(update(key_store_version).values(version=key_store_version.c.version + 1))


def import_keys(database: DatabaseKeyStore, file: FileKeyStore | None, redis_store: RedisKeyStore | None) -> list[str]:
    """Copy the keys of the file and of Redis into the database (names it lacks); remove Redis's copies.

    Returns the names imported. Running it again imports nothing new.
    """
    known = {record.name for record in database.records()}
    imported = []
    for store in (file, redis_store):
        for record in store.records() if store is not None else []:
            if record.name not in known:
                database.add(record)
                known.add(record.name)
                imported.append(record.name)
            if isinstance(store, RedisKeyStore):
                # Redis keeps only what may be lost: the database holds this key now.
                store.client.delete(store.RECORD.format(record.sha256))
                store.client.hdel(store.NAMES, record.name)
    return imported
