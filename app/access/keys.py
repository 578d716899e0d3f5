"""API keys: how they are made and hashed, and where their records live (a JSON file, the database, Redis).

Only a key's SHA-256 is ever stored; the key itself is shown once, by `sluice keys create`.
The database (app/ledger/keystore.py) is the system of record; the file serves a single host;
Redis holds only keys from before the database, until `sluice keys import` moves them.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from app.access.key_store import KeyStore, KeyStoreError, check_budget, check_share

KEY_PREFIX = "sluice-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent")
__all__ = ["KeyStoreError"]  # re-exported: it used to live here


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe, prefixed so secret scanners recognise it."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key: what the stores hold instead of the key."""
    # A fast hash is right here, unlike for passwords: a key carries 256 random bits, so no
    # guessing gets anywhere however fast the hash is, while a slow hash (bcrypt, argon2)
    # would cost tens of milliseconds of CPU on every request. No salt either: lookups go
    # by hash, and random keys give precomputed tables nothing to work with.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored: its name, its hash, its own limits (None: the defaults) and whether it is revoked."""

    name: str
    sha256: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    revoked: bool = False
    created: str = ""
    weight: int = 1
    priority: str = "normal"
    # Total tokens (prompt + completion) the key may use per budget_period (UTC day or month);
    # None: no budget. admin: may read everyone's usage (GET /v1/usage).
    budget_tokens: int | None = None
    budget_period: str | None = None
    admin: bool = False

    def matches(self, key_hash: str) -> bool:
        """Whether `key_hash` is this key's hash, compared in constant time."""
        return hmac.compare_digest(self.sha256, key_hash)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> KeyRecord:
        """A record from its JSON form; KeyStoreError naming the problem when it is not one."""
        if not (isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("sha256"), str)):
            raise KeyStoreError(f"not a key record (needs a name and a sha256): {data!r:.80}")
        limits = {f: data.get(f) for f in LIMIT_FIELDS}
        if any(v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0) for v in limits.values()):
            raise KeyStoreError(f"key {data['name']!r}: rpm, tpm and max_concurrent must be whole numbers >= 0")
        weight, priority = data.get("weight", 1), data.get("priority", "normal")
        check_share(weight, priority, f"key {data['name']!r}")
        budget, period = data.get("budget_tokens"), data.get("budget_period")
        check_budget(data["name"], budget, period)
        return cls(name=data["name"], sha256=data["sha256"], revoked=bool(data.get("revoked", False)),
                   created=str(data.get("created", "")), weight=weight, priority=priority, budget_tokens=budget,
                   budget_period=period if budget is not None else None, admin=bool(data.get("admin", False)),
                   **limits)


def new_record(name: str, key: str, *, rpm: int | None = None, tpm: int | None = None,
               max_concurrent: int | None = None, **extra: Any) -> KeyRecord:
    """The record of a new key under `name`; `extra`: other KeyRecord fields (weight, priority, budget, admin)."""
    if not NAME_PATTERN.fullmatch(name):
        raise KeyStoreError(f"invalid key name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
    check_share(extra.get("weight", 1), extra.get("priority", "normal"), f"key {name!r}")
    check_budget(name, extra.get("budget_tokens"), extra.get("budget_period"))
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return KeyRecord(name=name, sha256=hash_key(key), rpm=rpm, tpm=tpm, max_concurrent=max_concurrent,
                     created=created, **extra)


class FileKeyStore:
    """Key records in a JSON file, re-read whenever the file changes."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self._by_hash: dict[str, KeyRecord] = {}

    def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record whose hash is `key_hash`, as the file says now."""
        self._refresh()
        return self._by_hash.get(key_hash)

    def records(self) -> list[KeyRecord]:
        """Every record in the file."""
        return self._read()

    def add(self, record: KeyRecord) -> None:
        """Append a record; the name must be new."""
        with self._locked():
            records = self._read()
            if any(r.name == record.name for r in records):
                raise KeyStoreError(f"a key named {record.name!r} already exists in {self.path}")
            self._write([*records, record])

    def revoke(self, name: str) -> bool:
        """Mark the key `name` revoked; False when there is none."""
        return self.update(name, revoked=True) is not None

    def update(self, name: str, **changes: Any) -> KeyRecord | None:
        """Change fields of the key `name` (limits, budget, admin); its new record, None when there is none."""
        with self._locked():
            records = self._read()
            found = [replace(r, **changes) for r in records if r.name == name]
            if not found:
                return None
            self._write([found[0] if r.name == name else r for r in records])
            return found[0]

    def _refresh(self) -> None:
        # One stat per request: cheap, and the file is written by replacing it, so a change
        # of inode, size or mtime is a new version. Stat before read: never older than seen.
        try:
            st = os.stat(self.path)
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            signature = None
        if signature is None or signature != self._signature:
            self._by_hash = {r.sha256: r for r in self._read()}
            self._signature = signature

    def _read(self) -> list[KeyRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyStoreError(f"cannot read keys file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            entries = data["keys"]
            if not isinstance(entries, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise KeyStoreError(f"keys file {self.path} is not a JSON object with a \"keys\" list") from None
        return [KeyRecord.from_json(entry) for entry in entries]

    def _write(self, records: list[KeyRecord]) -> None:
        # Written aside then renamed over: a reader sees the old file or the new, never half.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp makes it 0600: hashes stay private
                json.dump({"keys": [r.to_json() for r in records]}, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (two `sluice keys` commands at once would lose one's change)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


class RedisKeyStore:
    """Key records in Redis, shared by every host: one GET per lookup."""

    kind = "redis"
    RECORD = "sluice:key:{}"  # by hash: the record as JSON
    NAMES = "sluice:key-names"  # name -> hash, for listing and revoking by name

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record whose hash is `key_hash`."""
        raw: bytes | None = self.client.get(self.RECORD.format(key_hash))  # type: ignore[assignment]
        return None if raw is None else KeyRecord.from_json(json.loads(raw))

    def records(self) -> list[KeyRecord]:
        """Every record, by name."""
        hashes: dict[bytes, bytes] = self.client.hgetall(self.NAMES)  # type: ignore[assignment]
        if not hashes:
            return []
        raws: list[bytes | None] = self.client.mget(  # type: ignore[assignment]
            [self.RECORD.format(h.decode()) for h in hashes.values()])
        return sorted((KeyRecord.from_json(json.loads(raw)) for raw in raws if raw), key=lambda r: r.name)

    def add(self, record: KeyRecord) -> None:
        """Store a record; the name must be new."""
        key = self.RECORD.format(record.sha256)
        self.client.set(key, json.dumps(record.to_json()))
        # The name is claimed second, atomically: the loser of a race removes its record.
        if not self.client.hsetnx(self.NAMES, record.name, record.sha256):
            self.client.delete(key)
            raise KeyStoreError(f"a key named {record.name!r} already exists in Redis")

    def revoke(self, name: str) -> bool:
        """Mark the key `name` revoked; False when there is none."""
        key_hash: bytes | None = self.client.hget(self.NAMES, name)  # type: ignore[assignment]
        record = key_hash and self.lookup(key_hash.decode())
        if not record:
            return False
        self.client.set(self.RECORD.format(record.sha256), json.dumps(replace(record, revoked=True).to_json()))
        return True

    def update(self, name: str, **changes: Any) -> KeyRecord | None:
        return None  # Redis's keys are read only now: `sluice keys import` moves them to the database


class KeyRing:
    """The key stores: the keys file and the database (new keys go to the file when set), and Redis (read only)."""

    def __init__(self, file: FileKeyStore | None, redis_store: RedisKeyStore | None,
                 database: KeyStore | None = None) -> None:
        self.file = file
        self.redis = redis_store
        self.database = database

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], client: redis.Redis | None,
                      database: KeyStore | None = None) -> KeyRing:
        """The stores SLUICE_KEYS_FILE and SLUICE_REDIS_URL name (`client` is the Redis connection), and `database`."""
        return cls(FileKeyStore(settings["KEYS_FILE"]) if settings["KEYS_FILE"] else None,
                   RedisKeyStore(client) if client is not None else None, database)

    @property
    def stores(self) -> list[KeyStore]:
        return [s for s in (self.file, self.redis, self.database) if s is not None]

    @property
    def home(self) -> KeyStore:
        """Where new keys go: the keys file, else the database, else (no database given) Redis."""
        home = self.file or self.database or self.redis
        if home is None:
            raise KeyStoreError("no key store configured: set SLUICE_KEYS_FILE or SLUICE_DATABASE_URL")
        return home

    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               max_concurrent: int | None = None, **extra: Any) -> tuple[str, KeyRecord]:
        """Make a key named `name` (unique across stores; `extra`: the record's other fields); returns the key."""
        home = self.home
        if any(record.name == name for _, record in self.records()):
            raise KeyStoreError(f"a key named {name!r} already exists")
        key = new_key()
        record = new_record(name, key, rpm=rpm, tpm=tpm, max_concurrent=max_concurrent, **extra)
        home.add(record)
        return key, record

    def revoke(self, name: str) -> bool:
        """Revoke `name` wherever it is stored; False when no store has it."""
        return any([store.revoke(name) for store in self.stores])  # a list: every store, no short cut

    def update(self, name: str, **changes: Any) -> KeyRecord | None:
        """Change fields of `name` in the store that holds it (not Redis: import its keys first)."""
        check_budget(name, changes.get("budget_tokens"), changes.get("budget_period", "day"))
        changed = [store.update(name, **changes) for store in (self.file, self.database) if store is not None]
        return next((record for record in changed if record is not None), None)

    def records(self) -> list[tuple[str, KeyRecord]]:
        """(store kind, record) for every key, revoked ones included."""
        return [(store.kind, record) for store in self.stores for record in store.records()]
