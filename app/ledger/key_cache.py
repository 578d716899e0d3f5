"""This worker's cache of key records from the database, dropped within a second of any change.

A request's key is looked up in memory; only a miss reads the database. A watcher greenlet
learns of changes through Redis pub/sub when Redis is configured (with a slow database poll
behind it, for messages missed while Redis was away), else by polling the key store's
version twice a second. While the database is down, cached keys keep working.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import redis
from sqlalchemy.exc import SQLAlchemyError

from app.access.keys import KeyRecord, KeyStoreError
from app.ledger.keystore import CHANNEL, DatabaseKeyStore

log = logging.getLogger(__name__)

MAX_CACHED = 10_000  # records and misses; past it the cache starts over
POLL_SECONDS = 0.5  # without Redis: a revocation reaches every worker within a second
BACKSTOP_POLL_SECONDS = 10.0  # with Redis pub/sub: the database poll only catches lost messages


class CachedKeyStore:
    """A DatabaseKeyStore behind this worker's cache; writes go straight through and clear it."""

    kind = "database"

    def __init__(self, store: DatabaseKeyStore, subscriber: redis.Redis | None = None) -> None:
        self.store = store
        self.subscriber = subscriber
        self._cache: dict[str, KeyRecord | None] = {}
        self._seen: tuple[int, int] | None = None  # (version, any keys) at the last poll
        self._tried_at = -POLL_SECONDS  # when the last poll began: a database that is away is not asked per request
        self._watcher: gevent.Greenlet | None = None

    def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record for `key_hash`: from the cache, else the database (KeyStoreError when it is down)."""
        self._ensure_watching()
        try:
            return self._cache[key_hash]
        except KeyError:
            pass
        try:
            record = self.store.lookup(key_hash)
        except SQLAlchemyError as exc:
            raise KeyStoreError(f"database unreachable: {type(exc).__name__}") from None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key_hash] = record  # misses too: unknown keys do not reach the database each time
        return record

    def has_keys(self) -> bool:
        """Whether the database holds any key (True when it cannot tell: refuse rather than serve openly)."""
        self._ensure_watching()
        if self._seen is None and time.monotonic() - self._tried_at >= POLL_SECONDS:
            self.poll()  # not known yet: ask now (the watcher keeps it fresh from then on)
        return self._seen is None or bool(self._seen[1])

    def poll(self) -> None:
        """Read the key store's version; a change empties the cache."""
        self._tried_at = time.monotonic()
        try:
            seen = self.store.version()
        except SQLAlchemyError:
            return  # the database is away: keep what is cached
        if seen != self._seen:
            self._seen = seen
            self.invalidate()

    def invalidate(self) -> None:
        self._cache.clear()

    def records(self) -> list[KeyRecord]:
        return self.store.records()

    def add(self, record: KeyRecord) -> None:
        self.store.add(record)
        self.invalidate()

    def revoke(self, name: str) -> bool:
        done = self.store.revoke(name)
        self.invalidate()
        return done

    def update(self, name: str, **changes: Any) -> KeyRecord | None:
        record = self.store.update(name, **changes)
        self.invalidate()
        return record

    def _ensure_watching(self) -> None:
        if self._watcher is None:
            self._watcher = gevent.spawn(self._watch)

    def _watch(self) -> None:
        if self.subscriber is None:
            while True:
                self.poll()
                gevent.sleep(POLL_SECONDS)
        else:
            poller = gevent.spawn(self._poll_every, BACKSTOP_POLL_SECONDS)
            try:
                self._listen(self.subscriber)
            finally:
                poller.kill()

    def _poll_every(self, seconds: float) -> None:
        while True:
            gevent.sleep(seconds)
            self.poll()

    def _listen(self, client: redis.Redis) -> None:
        while True:
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(CHANNEL)
                self.poll()  # changes made while not subscribed
                while True:
                    if pubsub.get_message(timeout=5.0) is not None:
                        self.invalidate()
            except (redis.RedisError, OSError) as exc:
                log.debug("key change subscription lost (%s): polling the database until Redis is back", exc)
                for _ in range(int(2 / POLL_SECONDS)):
                    self.poll()
                    gevent.sleep(POLL_SECONDS)
