"""Who is calling: `Authorization: Bearer KEY`, checked against the key stores before any view.

Sets `g.key_name` and `g.key_record` for the rest of the request (limits, logs, metrics).
Without a key store configured there is no authentication, and app/config/ has made
sure the gateway then listens on loopback only (or was explicitly told otherwise).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, current_app, g, request
from gevent.event import AsyncResult

from app import config
from app.access.keys import KEY_PREFIX, KeyRecord, KeyRing, KeyStoreError, hash_key
from app.access.shared_state import SharedState, get_shared_state, unavailable
from app.errors import Unauthorized, Unavailable
from app.ledger import get_ledger
from app.ledger.key_cache import CachedKeyStore

log = logging.getLogger(__name__)

EXTENSION = "sluice.auth"
# Probes, metrics (its own token) and the API's documentation stay open.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
# Query parameters clients put keys in. Refused: URLs end up in access logs and browser history.
KEY_PARAMS = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token"})
_CHALLENGE = 'Bearer realm="sluice"'
# A key record read from Redis serves this worker's requests for this long before it is read
# again: a revocation (or a change of limits) takes effect on every worker and host within it.
KEY_CACHE_SECONDS = 0.5
KEY_CACHE_SIZE = 10_000  # records kept at most; found keys only (random keys cannot fill it)
_READ_FAILED: Any = object()  # what waiters on a read get when it raised
USAGE_PATH = "/v1/usage"  # its `key` parameter names a key: see _carries_key


def is_open_path() -> bool:
    """Whether this request's path is served without a key."""
    path = request.path.rstrip("/") or "/"
    return path in OPEN_PATHS or path.startswith("/docs/")


def client_identity() -> str:
    """Whom limits count this request against: its key, or without keys its address."""
    name = g.get("key_name")
    return f"key:{name}" if name else f"addr:{request.remote_addr}"


def key_limit(field: str) -> int:
    """This caller's limit `field` (rpm, tpm, max_concurrent): its key's own, else the default; 0 is none."""
    record: KeyRecord | None = g.get("key_record")
    own = getattr(record, field) if record is not None else None
    return int(own if own is not None else current_app.config[f"DEFAULT_{field.upper()}"])


def refused(message: str, *, invalid: bool = False) -> Unauthorized:
    """A 401 with the Bearer challenge (RFC 6750), in the one error shape."""
    challenge = _CHALLENGE + (', error="invalid_token"' if invalid else "")
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def bearer_key(header: str | None) -> str:
    """The key in an Authorization header value; a 401 saying what is wrong otherwise."""
    if not header:
        raise refused("Missing API key: send it as `Authorization: Bearer KEY`.")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise refused("The Authorization header must use the Bearer scheme: `Authorization: Bearer KEY`.")
    key = key.strip()
    if not key:
        raise refused("Empty API key in the Authorization header.", invalid=True)
    return key


class Authenticator:
    """Finds a key's record (keys file, then the database, then Redis) and refuses unknown or revoked keys.

    `always`: a keys file or Redis is configured, so a key is required even before one exists;
    else keys are required as soon as the database holds one (checked within a second).
    """

    def __init__(self, ring: KeyRing, state: SharedState, always: bool = True) -> None:
        self.ring = ring
        self.state = state
        self.always = always
        # Records this worker last read from Redis: used only while Redis is down and the
        # policy is to fail open, so known keys keep working. Holds valid keys only.
        self._last_known: dict[str, KeyRecord] = {}
        # Records read from Redis in the last KEY_CACHE_SECONDS: key hash -> (record, read at).
        self._fresh: dict[str, tuple[KeyRecord, float]] = {}
        # Reads under way: the requests of a burst with the same key wait for one GET.
        self._reading: dict[str, AsyncResult] = {}

    def authenticate(self, header: str | None) -> KeyRecord:
        """The record of the key in `header`; 401 when there is no valid, unrevoked key."""
        key_hash = hash_key(bearer_key(header))
        record = self._find(key_hash)
        if record is None or record.revoked or not record.matches(key_hash):
            raise refused("Invalid or revoked API key.", invalid=True)
        return record

    def required(self) -> bool:
        """Whether this request needs a key: always with a keys file or Redis, else once the database has keys."""
        database = self.ring.database
        return self.always or (isinstance(database, CachedKeyStore) and database.has_keys())

    def _find(self, key_hash: str) -> KeyRecord | None:
        try:
            record = self.ring.file.lookup(key_hash) if self.ring.file else None
            if record is None and self.ring.database is not None:
                record = self.ring.database.lookup(key_hash)
            if record is None and self.ring.redis is not None:
                record = self._cached(key_hash) or self._read_once(key_hash)
        except KeyStoreError as exc:
            log.error("key store unusable: %s", exc)
            raise Unavailable("The gateway cannot read its API keys; retry shortly.",
                              code="key_store_unavailable", headers={"Retry-After": "5"}) from None
        return record

    def _cached(self, key_hash: str) -> KeyRecord | None:
        """The record read from Redis less than KEY_CACHE_SECONDS ago, if any."""
        seen = self._fresh.get(key_hash)
        if seen is None or time.monotonic() - seen[1] >= KEY_CACHE_SECONDS:
            return None
        return seen[0]

    def _read_once(self, key_hash: str) -> KeyRecord | None:
        """Read the record from Redis, or wait for the read of it already under way in this worker."""
        reading = self._reading.get(key_hash)
        if reading is not None:
            record: KeyRecord | None = reading.get()
            if record is not _READ_FAILED:
                return record
            return self._lookup_redis(key_hash)  # that read failed or was abandoned: read for this request
        self._reading[key_hash] = reading = AsyncResult()
        record = _READ_FAILED
        try:
            record = self._lookup_redis(key_hash)
            return record
        finally:
            del self._reading[key_hash]
            reading.set(record)

    def _lookup_redis(self, key_hash: str) -> KeyRecord | None:
        return self.state.call("keys.lookup", lambda: self._read_redis(key_hash), lambda: self._recall(key_hash))

    def _remember(self, key_hash: str, record: KeyRecord | None) -> None:
        if record is None:
            self._fresh.pop(key_hash, None)
            return
        if len(self._fresh) >= KEY_CACHE_SIZE:
            self._fresh.clear()  # crude, but bounded; the next reads refill it
        self._fresh[key_hash] = (record, time.monotonic())

    def _read_redis(self, key_hash: str) -> KeyRecord | None:
        record = self.ring.redis.lookup(key_hash)  # type: ignore[union-attr]
        self._remember(key_hash, record)
        if record is not None and not record.revoked:
            self._last_known[key_hash] = record
        else:
            self._last_known.pop(key_hash, None)
        return record

    def _recall(self, key_hash: str) -> KeyRecord:
        record = self._last_known.get(key_hash)
        if record is None:
            # A key this worker has not seen cannot be told from a wrong one: never let it in.
            raise unavailable()
        return record


def init_app(app: Flask) -> None:
    """Require a key on every request but the open paths, when a key store is configured or holds keys."""
    database = get_ledger(app).keys
    ring = KeyRing.from_settings(app.config, get_shared_state(app).client, database)
    always = config.authentication_required(app.config)
    if ring.file is not None:
        ring.file.records()  # an unreadable keys file stops the start, with its reason
        if not ring.file.path.exists():
            log.warning("keys file %s does not exist: every request is refused until "
                        "`sluice keys create` makes a key", ring.file.path)
    app.extensions[EXTENSION] = authenticator = Authenticator(ring, get_shared_state(app), always=always)
    if not authenticator.required():
        exposed = config.exposed_binds(app.config)
        where = f"on {', '.join(exposed)} (SLUICE_ALLOW_UNAUTHENTICATED=true)" if exposed else "on loopback only"
        log.warning("no API keys configured (none in the database; SLUICE_KEYS_FILE, SLUICE_REDIS_URL unset): "
                    "serving WITHOUT authentication, %s, until `sluice keys create` makes one", where)
    app.before_request(_authenticate)


def _carries_key(name: str, value: str) -> bool:
    """Whether a URL parameter is (probably) an API key. GET /v1/usage's `key` is a key's name, unless it looks
    like a key itself."""
    if name.lower() not in KEY_PARAMS:
        return False
    return name != "key" or request.path != USAGE_PATH or value.startswith(KEY_PREFIX) and len(value) > 40


def _authenticate() -> None:
    authenticator: Authenticator = current_app.extensions[EXTENSION]
    if is_open_path() or not authenticator.required():
        return
    if any(_carries_key(name, value) for name, value in request.args.items(multi=True)):
        raise refused("API keys are not accepted in the URL (URLs end up in logs): "
                      "send `Authorization: Bearer KEY` instead.", invalid=True)
    record = authenticator.authenticate(request.headers.get("Authorization"))
    g.key_name = record.name
    g.key_record = record
