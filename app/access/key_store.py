"""What every key store does (the keys file, Redis: app/access/keys.py; the database: app/ledger/keystore.py)
and the rules every record follows."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.access.keys import KeyRecord

BUDGET_PERIODS = ("day", "month")


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


class KeyStore(Protocol):
    """What every key store does (the file, Redis, the database: app/ledger/keystore.py)."""

    kind: str

    def lookup(self, key_hash: str) -> KeyRecord | None: ...
    def records(self) -> list[KeyRecord]: ...
    def add(self, record: KeyRecord) -> None: ...
    def revoke(self, name: str) -> bool: ...
    def update(self, name: str, **changes: Any) -> KeyRecord | None: ...
