"""Token windows and in-flight slots: in Redis (shared by every worker and host) or in this process.

Both backends have the same four operations, each atomic: the Redis one as a Lua script
(one round trip, no race between check and count), the memory one because a gevent worker
runs one greenlet at a time.
"""
from __future__ import annotations

import time
from typing import Protocol

import redis

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


class RedisCounters:
    """Counters in Redis: exact across every worker and host."""

    def __init__(self, client: redis.Redis) -> None:
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._take_slot = client.register_script(_TAKE_SLOT)
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

    def _forget_ended(self, now: float) -> None:
        # Windows of callers gone quiet would otherwise pile up for the life of the worker.
        for bucket in [b for b, (_, ends) in self._windows.items() if ends <= now]:
            del self._windows[bucket]
