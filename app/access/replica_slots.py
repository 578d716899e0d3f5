"""Replica capacity: a generation holds one of its replicas' slots while it runs, or waits its turn.

SLUICE_REPLICA_CAPACITY (or a replica's `capacity` in the upstreams file) is how many
generations one replica runs at once through the gateway. The replicas serving a model
share one count, the sum of their capacities (routing then spreads the work among them).
Beyond it, a request waits at the gateway in the fair queue (app/access/fair_queue.py, or
memory_queue.py without Redis), up to SLUICE_QUEUE_TIMEOUT seconds and SLUICE_QUEUE_MAX
waiting requests (503 with Retry-After past either); a client that leaves while waiting
leaves the queue at once. The slot is given back when the generation's Exchange finishes.

`wait_turn` is the one call, made by app/gateway.py right after admission.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gevent
from flask import Flask, current_app, g, request

from app.access.auth import client_identity
from app.access.fair_queue import FULL, GRANTED, RENEW_EVERY, UNKNOWN, WAKE_INTERVAL, RedisFairQueue
from app.access.memory_queue import MemoryFairQueue
from app.access.shared_state import SharedState, connect, get_shared_state
from app.errors import Unavailable
from app.exchange import Exchange, finished
from app.observe import metrics
from app.relay.disconnect import cancel_on_disconnect
from app.upstream import get_upstream
from app.upstream.specs import load_specs

log = logging.getLogger(__name__)
EXTENSION = "sluice.replica_slots"
# A key's class as vLLM's `priority` (it serves lower values first; 0 is its default).
VLLM_PRIORITY = {"high": -1, "normal": 0, "low": 1}
Queue = RedisFairQueue | MemoryFairQueue


@dataclass
class Ticket:
    """One generation's place: its set of replicas, its key's share, and the queue that holds it."""

    pool: str
    capacity: int
    cls: str
    key: str
    weight: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    queue: Queue | None = None  # Redis's, or this process's (no Redis, or an outage while failing open)

    def enqueue(self, queue: Queue, limit: int) -> int:
        return queue.enqueue(self.pool, self.id, self.cls, self.key, self.weight, self.capacity, limit)


@dataclass
class Turn:
    """A slot of one set of replicas' capacity, held by one generation."""

    slots: ReplicaSlots
    ticket: Ticket

    def release(self) -> None:
        """Give the slot back (once); the next waiting request may be granted it."""
        if self.slots.held.pop(self.ticket.id, None) is not None:
            self.slots.leave(self.ticket)


class ReplicaSlots:
    """This worker's view of replica capacity: who may run, who waits, and the leases it keeps alive."""

    def __init__(self, state: SharedState, redis_queue: RedisFairQueue | None, memory: MemoryFairQueue,
                 capacities: dict[str, int], *, timeout: float, limit: int, fair: bool) -> None:
        self.state, self.redis, self.memory = state, redis_queue, memory
        self.capacities = capacities  # replica url -> its capacity (0: no bound)
        self.timeout, self.limit, self.fair = timeout, limit, fair
        self.held: dict[str, Turn] = {}  # ticket id -> turn, for the lease renewals
        self._renewer: gevent.Greenlet | None = None

    def capacity_for(self, model: str) -> tuple[str, int]:
        """(pool name, capacity) of the replicas serving `model`; capacity 0 when any of them is unbounded."""
        replicas = get_upstream().replicas_for(model)
        serving = [r for r in replicas if r.serving()] or replicas
        capacities = [self.capacities.get(r.url, 0) for r in serving]
        if not all(capacities):
            return "", 0
        names = "\n".join(sorted(r.url for r in replicas))  # the same pool for every model they share
        return hashlib.blake2b(names.encode(), digest_size=6).hexdigest(), sum(capacities)

    def take(self, ticket: Ticket, *, key_name: str | None, environ: dict[str, Any]) -> Turn:
        """A slot now, or after waiting in fair order; 503 when the queue is full or the wait too long."""
        began = time.monotonic()
        answer = self._enqueue(ticket, self.limit)
        outcome = "admitted"
        try:
            if answer == FULL:
                outcome = "full"
                raise Unavailable(f"{self.limit} requests already wait for this model's replicas; retry shortly.",
                                  code="queue_full", headers={"Retry-After": self._retry_after()})
            if answer != GRANTED:
                with cancel_on_disconnect(environ), metrics.queued(key_name, ticket.cls):
                    self._wait(ticket, deadline=began + self.timeout)
        except BaseException as exc:
            if outcome != "full":  # still queued, or granted meanwhile: give it back either way
                outcome = "timeout" if getattr(exc, "code", None) == "queue_timeout" else "left"
                self.leave(ticket)
            raise
        finally:
            metrics.QUEUE_WAIT.labels(ticket.cls, outcome).observe(time.monotonic() - began)
        metrics.QUEUE_ADMITTED.labels(metrics.key_label(key_name)).inc()
        turn = self.held[ticket.id] = Turn(self, ticket)
        self._keep_renewing()
        return turn

    def _wait(self, ticket: Ticket, deadline: float) -> None:
        """Block until the ticket is granted; 503 at the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"No replica capacity freed within {self.timeout:g} s; retry shortly.",
                                  code="queue_timeout", headers={"Retry-After": self._retry_after()})
            wait_for = min(remaining, WAKE_INTERVAL)
            self._on(ticket, lambda q: q.wait(ticket.pool, ticket.id, wait_for), None)  # noqa: B023 - called at once
            answer = self._on(ticket, lambda q: q.poll(ticket.pool, ticket.id, ticket.capacity), UNKNOWN)
            if answer == UNKNOWN:  # its lease ran out (a long Redis outage), or Redis is gone: queue anew
                answer = self._enqueue(ticket, limit=1 << 30)
            if answer == GRANTED:
                return

    def _enqueue(self, ticket: Ticket, limit: int) -> int:
        """Queue the ticket in Redis, or in this process when Redis is absent or down and failing open."""
        def in_memory() -> int:
            ticket.queue = self.memory
            return ticket.enqueue(self.memory, limit)
        if self.redis is None:
            return in_memory()
        redis_queue = self.redis

        def in_redis() -> int:
            answer = ticket.enqueue(redis_queue, limit)
            ticket.queue = redis_queue
            return answer
        return self.state.call("queue", in_redis, in_memory)

    def _on(self, ticket: Ticket, use: Callable[[Queue], Any], failed: Any) -> Any:
        """use(the ticket's queue); `failed` when that is Redis and Redis does not answer (503 when failing closed)."""
        queue = ticket.queue
        assert queue is not None, "enqueued first"
        if queue is self.memory:
            return use(queue)
        return self.state.call("queue", lambda: use(queue), lambda: failed)

    def leave(self, ticket: Ticket) -> None:
        """Give back the ticket's slot or place in the queue; never raises (a lost release expires with its lease)."""
        queue = ticket.queue
        if queue is self.memory:
            queue.leave(ticket.pool, ticket.id, ticket.capacity)
        elif queue is not None:
            self.state.best_effort("queue.leave", lambda: queue.leave(ticket.pool, ticket.id, ticket.capacity))

    def _retry_after(self) -> str:
        return str(max(1, math.ceil(min(self.timeout, 30))))

    def _keep_renewing(self) -> None:
        if self.redis is not None and (self._renewer is None or self._renewer.dead):
            self._renewer = gevent.spawn(self._renew_forever)

    def _renew_forever(self) -> None:
        """Every RENEW_EVERY s, extend the leases of the Redis slots this worker holds (one call per pool)."""
        while self.held:
            gevent.sleep(RENEW_EVERY)
            by_pool: dict[str, list[str]] = {}
            for turn in list(self.held.values()):
                if turn.ticket.queue is self.redis:
                    by_pool.setdefault(turn.ticket.pool, []).append(turn.ticket.id)
            for pool, tickets in by_pool.items():
                self.state.best_effort("queue.renew", partial(self._renew, pool, tickets))

    def _renew(self, pool: str, tickets: list[str]) -> None:
        if self.redis is not None:
            self.redis.renew(pool, tickets)


def wait_turn(exchange: Exchange, payload: dict[str, Any]) -> None:
    """Hold a slot of the replicas' capacity for this generation (given back when it finishes), or 503."""
    slots: ReplicaSlots | None = current_app.extensions.get(EXTENSION)
    record = g.get("key_record")
    cls, weight = (record.priority, record.weight) if record is not None else ("normal", 1)
    exchange.vllm_priority = VLLM_PRIORITY[cls]
    if slots is None:
        return
    pool, capacity = slots.capacity_for(payload["model"])
    if not capacity:
        return
    if slots.fair:
        ticket = Ticket(pool, capacity, cls, client_identity(), weight)
    else:  # FIFO: one line, whoever asks
        ticket = Ticket(pool, capacity, "normal", "*", 1)
    exchange.turn = slots.take(ticket, key_name=g.get("key_name"), environ=request.environ)


@finished.connect
def _release(exchange: Exchange) -> None:
    if isinstance(exchange.turn, Turn):
        turn, exchange.turn = exchange.turn, None
        turn.release()


def init_app(app: Flask) -> None:
    """Replica capacity on when any replica has one; without Redis, say what each worker's share is."""
    config = app.config
    capacities = {spec.url: config["REPLICA_CAPACITY"] if spec.capacity is None else spec.capacity
                  for spec in load_specs(config)}
    if not any(capacities.values()):
        app.extensions[EXTENSION] = None
        return
    state = get_shared_state(app)
    workers = config["WORKERS"]
    redis_queue = None
    if state.client is not None:
        blocking = connect(config["REDIS_URL"], config["REDIS_TIMEOUT"] + WAKE_INTERVAL)
        redis_queue = RedisFairQueue(state.client, blocking)
    else:
        listed = ", ".join(f"{url}: {c}" for url, c in capacities.items() if c)
        log.warning("replica capacity without Redis: each of the %d workers runs 1/%d of the replicas' capacity "
                    "(%s; at least 1 generation) with a queue of its own; set SLUICE_REDIS_URL for one count and "
                    "one fair order across workers and hosts", workers, workers, listed)
    app.extensions[EXTENSION] = ReplicaSlots(
        state, redis_queue, MemoryFairQueue(workers), capacities, timeout=config["QUEUE_TIMEOUT"],
        limit=config["QUEUE_MAX"], fair=config["QUEUE_POLICY"] == "fair")
