"""Token budgets: total tokens (prompt + completion) a key may use per UTC day or month.

Counted in Redis, exact across every worker and host: reserved at admission (an estimate),
settled to the real count when the generation ends, as the token limit is. The count is
derived from the ledger, which is the system of record: when Redis has no count for the
period (a new period, or a Redis restarted empty) the first request seeds it from the
ledger's rows, so a lost Redis loses at most the rows still in flight. A separate script
from counters.py's, so that it can be folded into a single admission script later.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import redis

from app.access.keys import KeyRecord
from app.access.shared_state import SharedState

# {1, used after} when the amount fits; {0, used} when it does not; {-1, 0} when the
# period has no count yet (the caller seeds it from the ledger and asks again).
_RESERVE = """
local used = redis.call('GET', KEYS[1])
if not used then return {-1, 0} end
used = tonumber(used)
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, used} end
return {1, redis.call('INCRBY', KEYS[1], ARGV[1])}
"""
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 0
"""
# When the ledger cannot be read to seed a count: count from zero for this long, then seed
# again (by then the ledger holds what was counted meanwhile).
UNSEEDED_TTL = 30.0
# (key name, period start) -> tokens the ledger holds since then; None when it cannot be read now
Seed = Callable[[str, datetime], "int | None"]


@dataclass(frozen=True)
class Budget:
    """A key's budget for the current period."""

    key_name: str
    tokens: int
    period: str  # "day" or "month"
    start: datetime  # naive UTC
    end: datetime

    @property
    def bucket(self) -> str:
        return f"sluice:budget:{self.key_name}:{self.period}:{self.start:%Y-%m-%d}"

    def seconds_left(self, now: datetime) -> float:
        return max(1.0, (self.end - now).total_seconds())


def budget_of(record: KeyRecord | None, now: datetime) -> Budget | None:
    """The budget of `record` for the period containing `now`; None when it has none."""
    if record is None or record.budget_tokens is None or record.budget_period is None:
        return None
    start, end = period_bounds(record.budget_period, now)
    return Budget(record.name, record.budget_tokens, record.budget_period, start, end)


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC day or month containing `now`: (start, end)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    start = day.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


class BudgetCounter(Protocol):
    def reserve(self, budget: Budget, amount: int, now: datetime) -> tuple[bool, int]:
        """Count `amount` if it fits: (True, used after) or (False, used)."""

    def settle(self, budget: Budget, delta: int) -> None:
        """Correct a reservation to the real count (within the same period only)."""


class RedisBudgets:
    """Budget counts in Redis, seeded from the ledger."""

    def __init__(self, client: redis.Redis, seed: Seed) -> None:
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._client = client
        self._seed = seed

    def reserve(self, budget: Budget, amount: int, now: datetime) -> tuple[bool, int]:
        for _ in range(2):
            state, used = self._reserve(keys=[budget.bucket], args=[amount, budget.tokens])
            if state >= 0:
                return bool(state), int(used)
            seeded, ttl = _seeded(self._seed, budget, now)
            # NX: when workers seed at once, the first count stands and the others are dropped.
            self._client.set(budget.bucket, seeded, nx=True, px=int(ttl * 1000))
        return False, budget.tokens  # unreachable unless the count expires in between: refuse, safely

    def settle(self, budget: Budget, delta: int) -> None:
        self._settle(keys=[budget.bucket], args=[delta])


class MemoryBudgets:
    """Budget counts in this process: without Redis, or while it is down and the policy is to fail open."""

    def __init__(self, seed: Seed) -> None:
        self._seed = seed
        self._counts: dict[str, tuple[int, float]] = {}  # bucket -> (used, expires at, monotonic)

    def reserve(self, budget: Budget, amount: int, now: datetime) -> tuple[bool, int]:
        clock = time.monotonic()
        used, expires = self._counts.get(budget.bucket, (0, 0.0))
        if expires <= clock:
            self._counts = {b: c for b, c in self._counts.items() if c[1] > clock}  # forget ended periods
            used, ttl = _seeded(self._seed, budget, now)
            expires = clock + ttl
        if used + amount > budget.tokens:
            self._counts[budget.bucket] = (used, expires)
            return False, used
        self._counts[budget.bucket] = (used + amount, expires)
        return True, used + amount

    def settle(self, budget: Budget, delta: int) -> None:
        used, expires = self._counts.get(budget.bucket, (0, 0.0))
        if expires > time.monotonic():
            self._counts[budget.bucket] = (used + delta, expires)


def _seeded(seed: Seed, budget: Budget, now: datetime) -> tuple[int, float]:
    """(tokens used so far this period, seconds the count may live) from the ledger; (0, short) when it is away."""
    used = seed(budget.key_name, budget.start)
    return (0, UNSEEDED_TTL) if used is None else (used, budget.seconds_left(now) + 60)


class Budgets:
    """Budget counting under the Redis outage policy: Redis when it answers, else this process's counts."""

    def __init__(self, state: SharedState, seed: Seed) -> None:
        self.state = state
        self.memory = MemoryBudgets(seed)
        self.redis = RedisBudgets(state.client, seed) if state.client is not None else None

    def reserve(self, budget: Budget, amount: int, now: datetime) -> tuple[BudgetCounter, bool, int]:
        """(the counter that counted, whether `amount` fits, tokens used); 503 when failing closed."""
        def in_memory() -> tuple[BudgetCounter, bool, int]:
            return (self.memory, *self.memory.reserve(budget, amount, now))
        redis_budgets = self.redis
        if redis_budgets is None:
            return in_memory()
        return self.state.call("budget.reserve", lambda: (redis_budgets, *redis_budgets.reserve(budget, amount, now)),
                               in_memory)

    def settle(self, counter: BudgetCounter, budget: Budget, delta: int) -> None:
        """Settle on the counter that reserved; never raises (a lost correction is bounded by the estimate)."""
        if counter is self.memory:
            counter.settle(budget, delta)
        else:
            self.state.best_effort("budget.settle", lambda: counter.settle(budget, delta))
