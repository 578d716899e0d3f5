"""The fair queue in this process: without Redis, or while it is down and the policy is to fail open.

The same order as app/access/fair_queue.py's Lua scripts (strict classes, deficit round
robin across keys, first come first served within a key), over this worker's share of the
capacity. No leases: the slots die with the process that holds them. Atomic because a
gevent worker runs one greenlet at a time.
"""
from __future__ import annotations

from collections import deque

from gevent.event import Event

from app.access.fair_queue import CLASSES, FULL, GRANTED, UNKNOWN, WAITING


class DeficitRoundRobin:
    """Waiting tickets of one set of replicas, in the order they are to be granted."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], deque[str]] = {}  # (class, key) -> tickets, oldest first
        self.rings: dict[str, deque[str]] = {cls: deque() for cls in CLASSES}  # keys with tickets
        self.deficit: dict[tuple[str, str], float] = {}
        self.weight: dict[tuple[str, str], int] = {}
        self.owner: dict[str, tuple[str, str]] = {}  # ticket -> (class, key)

    def __len__(self) -> int:
        return len(self.owner)

    def add(self, ticket: str, cls: str, key: str, weight: int) -> None:
        """Queue `ticket` behind its key's others."""
        owner = (cls, key)
        self.owner[ticket] = owner
        self.weight[owner] = weight
        queue = self.queues.setdefault(owner, deque())
        queue.append(ticket)
        if len(queue) == 1:  # the key joins the ring, credited for its first turn
            self.rings[cls].append(key)
            self.deficit[owner] = weight

    def remove(self, ticket: str) -> bool:
        """Take a waiting ticket out; False when it was not waiting."""
        owner = self.owner.pop(ticket, None)
        if owner is None:
            return False
        queue = self.queues[owner]
        queue.remove(ticket)
        if not queue:
            self._drop(owner)
        return True

    def pop(self) -> str | None:
        """The next ticket to grant, taken out of the queue; None when none waits."""
        for cls in CLASSES:
            ring = self.rings[cls]
            while ring:  # ends: each pass round the ring adds at least 1 to every deficit
                owner = (cls, ring[0])
                if self.deficit[owner] >= 1:
                    self.deficit[owner] -= 1
                    ticket = self.queues[owner].popleft()
                    del self.owner[ticket]
                    if not self.queues[owner]:
                        self._drop(owner)
                    return ticket
                self.deficit[owner] += self.weight[owner]
                ring.rotate(-1)
        return None

    def _drop(self, owner: tuple[str, str]) -> None:
        del self.queues[owner], self.deficit[owner], self.weight[owner]
        self.rings[owner[0]].remove(owner[1])


class MemoryFairQueue:
    """Per-process slots and queue, with the interface of RedisFairQueue."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers  # this worker's share of a capacity is 1/workers of it
        self._slots: dict[str, set[str]] = {}
        self._queues: dict[str, DeficitRoundRobin] = {}
        self._wake: dict[str, Event] = {}

    def share(self, capacity: int) -> int:
        """This worker's part of `capacity`: never more than its share, never none."""
        return max(1, capacity // self.workers)

    def enqueue(self, pool: str, ticket: str, cls: str, key: str, weight: int, capacity: int, limit: int) -> int:
        slots, queue = self._slots.setdefault(pool, set()), self._queues.setdefault(pool, DeficitRoundRobin())
        if not queue and len(slots) < self.share(capacity):
            slots.add(ticket)
            return GRANTED
        if len(queue) >= limit:
            return FULL
        queue.add(ticket, cls, key, weight)
        self._wake[ticket] = Event()
        return WAITING

    def poll(self, pool: str, ticket: str, capacity: int) -> int:
        self._dispatch(pool, capacity)
        if ticket in self._slots.get(pool, ()):
            return GRANTED
        return WAITING if ticket in self._wake else UNKNOWN

    def wait(self, pool: str, ticket: str, timeout: float) -> None:
        event = self._wake.get(ticket)
        if event is not None:
            event.wait(timeout)

    def leave(self, pool: str, ticket: str, capacity: int) -> None:
        slots = self._slots.get(pool, set())
        if ticket in slots:
            slots.discard(ticket)
        elif pool in self._queues:
            self._queues[pool].remove(ticket)
        self._wake.pop(ticket, None)
        self._dispatch(pool, capacity)

    def renew(self, pool: str, tickets: list[str]) -> None:
        """Nothing to renew: a process's slots end with it."""

    def _dispatch(self, pool: str, capacity: int) -> None:
        slots, queue = self._slots.get(pool, set()), self._queues.get(pool)
        while queue and len(slots) < self.share(capacity):
            ticket = queue.pop()
            if ticket is None:
                return
            slots.add(ticket)
            event = self._wake.pop(ticket, None)
            if event is not None:
                event.set()
