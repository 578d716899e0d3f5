"""Releases of finished generations (slot back, tokens settled), sent to Redis together.

Every generation's release is a round trip to Redis. Those that end while the worker is
busy are queued and sent in one pipeline by one greenlet at the event loop's next turn:
under load, one round trip for many generations, and never on a client's latency.
"""
from __future__ import annotations

import gevent

from app.access.counters import RedisCounters, Slot, Tokens
from app.access.shared_state import SharedState


class BatchedReleases:
    """A worker's queue of releases for Redis, flushed at the next turn of the event loop."""

    def __init__(self, counters: RedisCounters, state: SharedState) -> None:
        self.counters = counters
        self.state = state
        # Bounded by the generations in flight: each adds one entry, once, when it ends.
        self._pending: list[tuple[Slot, Tokens]] = []
        self._flush_scheduled = False

    def add(self, slots: Slot, tokens: Tokens) -> None:
        """Queue a release; it reaches Redis within one turn of the event loop."""
        self._pending.append((slots, tokens))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            gevent.spawn(self._flush)

    def _flush(self) -> None:
        batch, self._pending, self._flush_scheduled = self._pending, [], False
        # Never raises: when Redis does not answer, what was held expires by itself.
        self.state.best_effort("admission.release", lambda: self.counters.release_many(batch))
