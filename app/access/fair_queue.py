"""The fair queue in Redis: one queue and one count of replica capacity for every worker and host.

Waiting requests are held as tickets in per-key lists, one set of lists per priority class.
Which ticket gets the next free slot is decided inside Redis, by one Lua script at a time,
so two workers (or hosts) can never disagree on the order:

- classes are strict: a high ticket always goes before a normal one, a normal before a low;
- within a class, keys take turns by deficit round robin (Shreedhar and Varghese, 1995):
  each key in the ring holds a deficit; at the head of the ring, a key whose deficit is at
  least 1 is given one slot (deficit - 1), else it is credited its weight and goes to the
  tail. A key of weight 3 is thus given three slots for every one of a key of weight 1
  while both wait, a key waiting alone gets every slot, and a key that has just joined
  waits for at most one turn of each other key. Every slot costs 1: a generation's length
  is not known in advance, and capacity is counted in generations, not tokens;
- within a key, first come first served (a list).

Slots and waiting tickets are leases on Redis's clock: a worker renews the slots it holds
every few seconds and each waiter renews its ticket each time it polls, so a worker killed
with -9 gives everything back once its leases expire (SLOT_LEASE seconds). A grant pushes
to the ticket's wake-up list, on which its waiter blocks (BLPOP) for at most WAKE_INTERVAL
before polling again: a wake-up that is lost costs a second, never a stranded request.
"""
from __future__ import annotations

import redis

SLOT_LEASE = 6.0  # seconds a slot or a waiting ticket outlives its last renewal
RENEW_EVERY = 2.0  # seconds between a worker's renewals of the slots it holds
WAKE_INTERVAL = 1.0  # seconds a waiter blocks before it polls again
MIN_WAIT = 0.01  # seconds: the shortest block asked of Redis
GRANTED, WAITING, FULL, UNKNOWN = 1, 0, -1, -2  # what enqueue and poll answer (UNKNOWN: poll only)
CLASSES = ("high", "normal", "low")  # strict order

# Keys under the prefix P (one per set of replicas): P:slots (zset ticket -> lease end),
# P:waiting (zset ticket -> lease end), P:owner (hash ticket -> "class key"), P:q:class:key
# (list of tickets), P:ring:class (list of keys with tickets), P:deficit and P:weight (hash
# "class key" -> number), P:wake:ticket (list). Every key is reached through the prefix: a
# single Redis (or a cluster slot), as the rest of the gateway's shared state.
_COMMON = """
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function forget(ticket)
  local owner = redis.call('HGET', P .. ':owner', ticket)
  redis.call('HDEL', P .. ':owner', ticket)
  redis.call('ZREM', P .. ':waiting', ticket)
  if not owner then return end
  local sep = string.find(owner, ' ', 1, true)
  local class, key = string.sub(owner, 1, sep - 1), string.sub(owner, sep + 1)
  local q = P .. ':q:' .. class .. ':' .. key
  redis.call('LREM', q, 1, ticket)
  if redis.call('LLEN', q) == 0 then
    redis.call('LREM', P .. ':ring:' .. class, 1, key)
    redis.call('HDEL', P .. ':deficit', owner)
    redis.call('HDEL', P .. ':weight', owner)
  end
end

local function purge()
  redis.call('ZREMRANGEBYSCORE', P .. ':slots', '-inf', now)
  for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', P .. ':waiting', '-inf', now, 'LIMIT', 0, 100)) do
    forget(ticket)
  end
end

local function pick()
  for _, class in ipairs({'high', 'normal', 'low'}) do
    local ring = P .. ':ring:' .. class
    while true do  -- ends: each pass round the ring adds at least 1 to every deficit
      local key = redis.call('LINDEX', ring, 0)
      if not key then break end
      local owner = class .. ' ' .. key
      local q = P .. ':q:' .. class .. ':' .. key
      local deficit = tonumber(redis.call('HGET', P .. ':deficit', owner) or '0')
      if deficit >= 1 then
        local ticket = redis.call('LPOP', q)
        if redis.call('LLEN', q) == 0 then
          redis.call('LPOP', ring)
          redis.call('HDEL', P .. ':deficit', owner)
          redis.call('HDEL', P .. ':weight', owner)
        else
          redis.call('HSET', P .. ':deficit', owner, deficit - 1)
        end
        if ticket then return ticket end
      else
        redis.call('HSET', P .. ':deficit', owner, deficit + tonumber(redis.call('HGET', P .. ':weight', owner) or '1'))
        redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
      end
    end
  end
  return nil
end

local function dispatch(capacity, lease)
  local free = capacity - redis.call('ZCARD', P .. ':slots')
  while free > 0 do
    local ticket = pick()
    if not ticket then return end
    redis.call('HDEL', P .. ':owner', ticket)
    redis.call('ZREM', P .. ':waiting', ticket)
    redis.call('ZADD', P .. ':slots', now + lease, ticket)
    local wake = P .. ':wake:' .. ticket
    redis.call('RPUSH', wake, 1)
    redis.call('PEXPIRE', wake, lease)
    free = free - 1
  end
end
"""

# ARGV: prefix, ticket, class, key, weight, capacity, max waiting, lease ms.
_ENQUEUE = _COMMON + """
purge()
local ticket, class, key, weight = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local capacity, lease = tonumber(ARGV[6]), tonumber(ARGV[8])
local waiting = redis.call('ZCARD', P .. ':waiting')
if waiting == 0 and redis.call('ZCARD', P .. ':slots') < capacity then
  redis.call('ZADD', P .. ':slots', now + lease, ticket)
  return 1
end
if waiting >= tonumber(ARGV[7]) then return -1 end
local owner = class .. ' ' .. key
redis.call('HSET', P .. ':owner', ticket, owner)
redis.call('ZADD', P .. ':waiting', now + lease, ticket)
redis.call('HSET', P .. ':weight', owner, weight)
if redis.call('RPUSH', P .. ':q:' .. class .. ':' .. key, ticket) == 1 then
  redis.call('RPUSH', P .. ':ring:' .. class, key)
  redis.call('HSET', P .. ':deficit', owner, weight)
end
dispatch(capacity, lease)
if redis.call('ZSCORE', P .. ':slots', ticket) then return 1 end
return 0
"""

# ARGV: prefix, ticket, capacity, lease ms. Renews the ticket's lease, hands out free slots.
_POLL = _COMMON + """
purge()
local ticket, capacity, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('ZSCORE', P .. ':slots', ticket) then return 1 end
if not redis.call('ZSCORE', P .. ':waiting', ticket) then return -2 end
redis.call('ZADD', P .. ':waiting', now + lease, ticket)
dispatch(capacity, lease)
if redis.call('ZSCORE', P .. ':slots', ticket) then return 1 end
return 0
"""

# ARGV: prefix, ticket, capacity, lease ms. Gives the ticket's slot back, or takes it out of the queue.
_LEAVE = _COMMON + """
purge()
local ticket = ARGV[2]
redis.call('DEL', P .. ':wake:' .. ticket)
if redis.call('ZREM', P .. ':slots', ticket) == 0 then forget(ticket) end
dispatch(tonumber(ARGV[3]), tonumber(ARGV[4]))
return 0
"""

# ARGV: prefix, lease ms, tickets... Extends the leases of slots still held (XX: never revives one).
_RENEW = """
local t = redis.call('TIME')
local ends = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
for i = 3, #ARGV do redis.call('ZADD', ARGV[1] .. ':slots', 'XX', ends, ARGV[i]) end
return 0
"""


def prefix(pool: str) -> str:
    """The Redis key prefix of one set of replicas' queue and slots."""
    return f"sluice:fq:{pool}"


class RedisFairQueue:
    """The queue and slot count in Redis; each call is one atomic script (one round trip)."""

    def __init__(self, client: redis.Redis, blocking_client: redis.Redis) -> None:
        self._enqueue = client.register_script(_ENQUEUE)
        self._poll = client.register_script(_POLL)
        self._leave = client.register_script(_LEAVE)
        self._renew = client.register_script(_RENEW)
        # BLPOP holds its connection while it waits: a client of its own, whose socket
        # timeout is longer than the wait (the shared one's is SLUICE_REDIS_TIMEOUT).
        self._blocking = blocking_client
        self._lease_ms = int(SLOT_LEASE * 1000)

    def enqueue(self, pool: str, ticket: str, cls: str, key: str, weight: int, capacity: int, limit: int) -> int:
        """GRANTED (a slot is held), WAITING (queued) or FULL (`limit` tickets wait already)."""
        return int(self._enqueue(args=[prefix(pool), ticket, cls, key, weight, capacity, limit, self._lease_ms]))

    def poll(self, pool: str, ticket: str, capacity: int) -> int:
        """GRANTED, WAITING (lease renewed) or UNKNOWN (its lease ran out: enqueue again)."""
        return int(self._poll(args=[prefix(pool), ticket, capacity, self._lease_ms]))

    def wait(self, pool: str, ticket: str, timeout: float) -> None:
        """Block until the ticket may have been granted, or `timeout` seconds."""
        # Redis counts BLPOP's timeout in whole milliseconds, and 0 blocks for ever.
        self._blocking.blpop([f"{prefix(pool)}:wake:{ticket}"], timeout=max(timeout, MIN_WAIT))

    def leave(self, pool: str, ticket: str, capacity: int) -> None:
        """Give back the ticket's slot, or take it out of the queue; the next ticket may be granted."""
        self._leave(args=[prefix(pool), ticket, capacity, self._lease_ms])

    def renew(self, pool: str, tickets: list[str]) -> None:
        """Extend the leases of slots this worker holds."""
        self._renew(args=[prefix(pool), self._lease_ms, *tickets])
