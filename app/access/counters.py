"""Token windows and in-flight slots: in Redis (shared by every worker and host) or in this process.

Both backends have the same operations, each atomic: the Redis one as a Lua script (one
round trip, no race between check and count), the memory one because a gevent worker runs
one greenlet at a time. `hold` and `release` do a generation's slot and tokens together:
one round trip before the upstream is called, one after the response has gone out.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Protocol

import redis

from app.access.shared_state import run_script

# Tokens: a fixed window per caller that starts with its first reservation. Returns
# {1, used after} when the amount fits under the limit, else {0, ms until the window ends}.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if used + amount > tonumber(ARGV[2]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = tonumber(ARGV[3]) end
  return {0, ttl}
end
used = redis.call('INCRBY', KEYS[1], amount)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, used}
"""
# Correct a reservation to the real count; never recreates a window that has ended.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 0
"""
# In-flight slots: a sorted set of slot ids scored by their expiry, on Redis's clock. Not
# INCR/DECR: a worker killed mid-generation would leave its count behind for as long as
# the key keeps being used; here each lost slot expires on its own.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# A generation's slot and token reservation together (each skipped when its cap or limit is
# 0): {0, 0, 0} at the slot cap; {1, 0, ms until the window ends} when the tokens do not fit
# (the slot is given back); {1, 1, tokens used after} when both are held.
_HOLD = """
local cap, limit = tonumber(ARGV[2]), tonumber(ARGV[5])
if cap > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= cap then return {0, 0, 0} end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if limit == 0 then return {1, 1, 0} end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local amount = tonumber(ARGV[4])
if used + amount > limit then
  if cap > 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl < 0 then ttl = tonumber(ARGV[6]) end
  return {1, 0, ttl}
end
used = redis.call('INCRBY', KEYS[2], amount)
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return {1, 1, used}
"""
# Give a slot back (ARGV[1] empty: none held) and settle a reservation (ARGV[2] 0: nothing to settle).
_RELEASE = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
if tonumber(ARGV[2]) ~= 0 and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], ARGV[2]) end
return 0
"""


class Counters(Protocol):
    """What admission needs from a backend."""

    def reserve(self, bucket: str, amount: int, limit: int, window: float) -> tuple[bool, float]:
        """Count `amount` if it fits under `limit`: (True, used now) or (False, seconds until the window ends)."""

    def settle(self, bucket: str, delta: int) -> None:
        """Add `delta` (negative: give back) to the window, if it has not ended."""

    def take_slot(self, bucket: str, slot: str, cap: int, ttl: float) -> bool:
        """Hold `slot` unless `cap` slots are held already; an unreleased slot expires after `ttl` s."""

    def give_slot(self, bucket: str, slot: str) -> None:
        """Release `slot`."""

    def hold(self, slots: Slot, tokens: Tokens) -> tuple[bool, bool, float]:
        """take_slot then reserve, the slot given back if the tokens do not fit: (slot taken, tokens fit, value)."""

    def release(self, slots: Slot, tokens: Tokens) -> None:
        """give_slot (when a slot is named) and settle (when the amount is not 0)."""


class Slot(NamedTuple):
    """An in-flight slot: its bucket, its id, the cap (0: no cap) and how long an unreleased slot lives."""

    bucket: str
    slot: str
    cap: int = 0
    ttl: float = 0.0


class Tokens(NamedTuple):
    """Tokens to reserve (or, released, to settle) in a window: limit 0 means no limit."""

    bucket: str
    amount: int
    limit: int = 0
    window: float = 0.0


def _hold_in_steps(counters: Counters, slots: Slot, tokens: Tokens) -> tuple[bool, bool, float]:
    """`hold` from the single operations (the memory backend: atomic anyway)."""
    if slots.cap and not counters.take_slot(slots.bucket, slots.slot, slots.cap, slots.ttl):
        return False, False, 0.0
    if not tokens.limit:
        return True, True, 0.0
    fits, value = counters.reserve(tokens.bucket, tokens.amount, tokens.limit, tokens.window)
    if not fits and slots.cap:
        counters.give_slot(slots.bucket, slots.slot)
    return True, fits, value


class RedisCounters:
    """Counters in Redis: exact across every worker and host."""

    def __init__(self, client: redis.Redis) -> None:
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)
        self._client = client

    def reserve(self, bucket: str, amount: int, limit: int, window: float) -> tuple[bool, float]:
        admitted, value = self._reserve(keys=[bucket], args=[amount, limit, int(window * 1000)])
        return (True, float(value)) if admitted else (False, value / 1000)

    def settle(self, bucket: str, delta: int) -> None:
        self._settle(keys=[bucket], args=[delta])

    def take_slot(self, bucket: str, slot: str, cap: int, ttl: float) -> bool:
        return bool(self._take_slot(keys=[bucket], args=[slot, cap, int(ttl * 1000)]))

    def give_slot(self, bucket: str, slot: str) -> None:
        self._client.zrem(bucket, slot)

    def hold(self, slots: Slot, tokens: Tokens) -> tuple[bool, bool, float]:
        taken, fits, value = run_script(self._client, self._hold, [slots.bucket, tokens.bucket], [
            slots.slot, slots.cap, int(slots.ttl * 1000), tokens.amount, tokens.limit, int(tokens.window * 1000)])
        return bool(taken), bool(fits), float(value) if fits else value / 1000

    def release(self, slots: Slot, tokens: Tokens) -> None:
        run_script(self._client, self._release, [slots.bucket, tokens.bucket], [slots.slot, tokens.amount])

    def release_many(self, batch: list[tuple[Slot, Tokens]]) -> None:
        """Several releases in one round trip (a pipeline of the release script)."""
        if len(batch) == 1:
            self.release(*batch[0])
            return
        pipe = self._client.pipeline(transaction=False)
        for slots, tokens in batch:
            pipe.evalsha(self._release.sha, 2, slots.bucket, tokens.bucket, slots.slot, tokens.amount)
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(result, redis.exceptions.NoScriptError) for result in results):
            for slots, tokens in batch:  # Redis lost its scripts (a restart): these calls load it again
                self.release(slots, tokens)


class MemoryCounters:
    """Counters in this process: without Redis, or while it is down and the policy is to fail open."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, float]] = {}  # bucket -> (used, ends at)
        self._slots: dict[str, dict[str, float]] = {}  # bucket -> slot -> expires at

    def reserve(self, bucket: str, amount: int, limit: int, window: float) -> tuple[bool, float]:
        now = time.monotonic()
        used, ends = self._windows.get(bucket, (0, 0.0))
        if ends <= now:
            self._forget_ended(now)
            used, ends = 0, now + window
        if used + amount > limit:
            return False, ends - now
        self._windows[bucket] = (used + amount, ends)
        return True, float(used + amount)

    def settle(self, bucket: str, delta: int) -> None:
        used, ends = self._windows.get(bucket, (0, 0.0))
        if ends > time.monotonic():
            self._windows[bucket] = (used + delta, ends)

    def take_slot(self, bucket: str, slot: str, cap: int, ttl: float) -> bool:
        now = time.monotonic()
        held = {s: t for s, t in self._slots.get(bucket, {}).items() if t > now}
        if len(held) >= cap:
            self._slots[bucket] = held
            return False
        held[slot] = now + ttl
        self._slots[bucket] = held
        return True

    def give_slot(self, bucket: str, slot: str) -> None:
        held = self._slots.get(bucket, {})
        held.pop(slot, None)
        if not held:
            self._slots.pop(bucket, None)

    def hold(self, slots: Slot, tokens: Tokens) -> tuple[bool, bool, float]:
        return _hold_in_steps(self, slots, tokens)

    def release(self, slots: Slot, tokens: Tokens) -> None:
        if slots.slot:
            self.give_slot(slots.bucket, slots.slot)
        if tokens.amount:
            self.settle(tokens.bucket, tokens.amount)

    def _forget_ended(self, now: float) -> None:
        # Windows of callers gone quiet would otherwise pile up for the life of the worker.
        for bucket in [b for b, (_, ends) in self._windows.items() if ends <= now]:
            del self._windows[bucket]
