"""What every key store does (the keys file, Redis: app/access/keys.py; the database: app/ledger/keystore.py)
and the rules every record follows."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.access.keys import KeyRecord

BUDGET_PERIODS = ("day", "month")
# The key's share when replica capacity is scarce (app/access/fair_queue.py): classes are strict
# (a higher one is always admitted first), weights share capacity within a class.
PRIORITIES = ("high", "normal", "low")
MAX_WEIGHT = 1000


class KeyStoreError(ValueError):
    """A key store cannot be used as asked (unreadable file, duplicate or invalid name)."""


def check_budget(name: str, budget: Any, period: Any) -> None:
    """KeyStoreError unless `budget` is None or a whole number >= 0 with a period of BUDGET_PERIODS."""
    if budget is None:
        return
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise KeyStoreError(f"key {name!r}: budget_tokens must be a whole number >= 0")
    if period not in BUDGET_PERIODS:
        raise KeyStoreError(f"key {name!r}: a budget needs a budget_period of {' or '.join(BUDGET_PERIODS)}")


def check_share(weight: Any, priority: Any, where: str) -> None:
    """KeyStoreError unless `weight` is a whole number from 1 to MAX_WEIGHT and `priority` one of PRIORITIES."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise KeyStoreError(f"{where}: weight must be a whole number from 1 to {MAX_WEIGHT}, not {weight!r}")
    if priority not in PRIORITIES:
        raise KeyStoreError(f"{where}: priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")


class KeyStore(Protocol):
    """What every key store does (the file, Redis, the database: app/ledger/keystore.py)."""

    kind: str

    def lookup(self, key_hash: str) -> KeyRecord | None: ...
    def records(self) -> list[KeyRecord]: ...
    def add(self, record: KeyRecord) -> None: ...
    def revoke(self, name: str) -> bool: ...
    def update(self, name: str, **changes: Any) -> KeyRecord | None: ...
