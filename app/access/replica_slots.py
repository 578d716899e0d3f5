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
from dataclasses import dataclass
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
class Turn:
    """A slot of one set of replicas' capacity, held by one generation."""

    slots: ReplicaSlots
    queue: Queue
    pool: str
    ticket: str
    capacity: int

    def release(self) -> None:
        """Give the slot back (once); the next waiting request may be granted it."""
        if self.slots.held.pop(self.ticket, None) is not None:
            self.slots.give_back(self.queue, lambda q: q.leave(self.pool, self.ticket, self.capacity))


class ReplicaSlots:
    """This worker's view of replica capacity: who may run, who waits, and the leases it keeps alive."""

    def __init__(self, state: SharedState, redis_queue: RedisFairQueue | None, memory: MemoryFairQueue,
                 capacities: dict[str, int], *, timeout: float, limit: int, fair: bool) -> None:
        self.state, self.redis, self.memory = state, redis_queue, memory
        self.capacities = capacities  # replica url -> its capacity (0: no bound)
        self.timeout, self.limit, self.fair = timeout, limit, fair
        self.held: dict[str, Turn] = {}  # ticket -> turn, for the lease renewals
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

    def take(self, pool: str, capacity: int, *, key: str, cls: str, weight: int, key_name: str | None,
             environ: dict[str, Any]) -> Turn:
        """A slot now, or after waiting in fair order; 503 when the queue is full or the wait too long."""
        ticket, began = uuid.uuid4().hex, time.monotonic()
        queue, answer = self._on_queue(lambda q: q.enqueue(pool, ticket, cls, key, weight, capacity, self.limit))
        where = [queue]  # the queue holding the ticket: the Redis one, or this process's after an outage
        outcome = "admitted"
        try:
            if answer == FULL:
                outcome = "full"
                raise Unavailable(f"{self.limit} requests already wait for this model's replicas; retry shortly.",
                                  code="queue_full", headers={"Retry-After": self._retry_after()})
            if answer != GRANTED:
                with cancel_on_disconnect(environ), metrics.queued(key_name, cls):
                    self._wait(where, pool, ticket, capacity, began, (cls, key, weight))
        except BaseException as exc:
            if outcome != "full":  # still queued, or granted meanwhile: give it back either way
                outcome = "timeout" if getattr(exc, "code", None) == "queue_timeout" else "left"
                self.give_back(where[0], lambda q: q.leave(pool, ticket, capacity))
            raise
        finally:
            metrics.QUEUE_WAIT.labels(cls, outcome).observe(time.monotonic() - began)
        metrics.QUEUE_ADMITTED.labels(metrics.key_label(key_name)).inc()
        turn = self.held[ticket] = Turn(self, where[0], pool, ticket, capacity)
        self._keep_renewing()
        return turn

    def _wait(self, where: list[Queue], pool: str, ticket: str, capacity: int, began: float,
              owner: tuple[str, str, int]) -> None:
        """Block until the ticket is granted by the queue in where[0]; 503 at the timeout."""
        cls, key, weight = owner
        while True:
            remaining = began + self.timeout - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"No replica capacity freed within {self.timeout:g} s; retry shortly.",
                                  code="queue_timeout", headers={"Retry-After": self._retry_after()})
            wait_for = min(remaining, WAKE_INTERVAL)
            self._on(where[0], lambda q, s=wait_for: q.wait(pool, ticket, s), None)  # type: ignore[misc]
            answer = self._on(where[0], lambda q: q.poll(pool, ticket, capacity), UNKNOWN)
            if answer == UNKNOWN:  # its lease ran out (a long Redis outage), or Redis is gone: queue anew
                where[0], answer = self._on_queue(lambda q: q.enqueue(pool, ticket, cls, key, weight, capacity,
                                                                      1 << 30))
            if answer == GRANTED:
                return

    def _on_queue(self, use: Callable[[Queue], int]) -> tuple[Queue, int]:
        """use(the Redis queue), or this process's when Redis is absent or down and failing open."""
        if self.redis is None:
            return self.memory, use(self.memory)
        redis_queue: Queue = self.redis

        def in_redis() -> tuple[Queue, int]:
            return redis_queue, use(redis_queue)

        def in_memory() -> tuple[Queue, int]:
            return self.memory, use(self.memory)
        return self.state.call("queue", in_redis, in_memory)

    def _on(self, queue: Queue, use: Callable[[Queue], Any], failed: Any) -> Any:
        """use(queue); `failed` when it is Redis and Redis does not answer (503 when failing closed)."""
        if queue is self.memory:
            return use(queue)
        return self.state.call("queue", lambda: use(queue), lambda: failed)

    def give_back(self, queue: Queue, use: Callable[[Queue], object]) -> None:
        """Release on the queue that granted; never raises (a lost release expires with its lease)."""
        if queue is self.memory:
            use(queue)
        else:
            self.state.best_effort("queue.leave", lambda: use(queue))

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
                if turn.queue is self.redis:
                    by_pool.setdefault(turn.pool, []).append(turn.ticket)
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
    key = client_identity()
    if not slots.fair:  # one line, whoever asks
        cls, key, weight = "normal", "*", 1
    exchange.turn = slots.take(pool, capacity, key=key, cls=cls, weight=weight, key_name=g.get("key_name"),
                               environ=request.environ)


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
        shares = ", ".join(f"{url}: {max(1, c // workers)} of {c}" for url, c in capacities.items() if c)
        log.warning("replica capacity without Redis: each of the %d workers runs its own share (%s) and keeps "
                    "its own queue; set SLUICE_REDIS_URL for one count and one fair order", workers, shares)
    app.extensions[EXTENSION] = ReplicaSlots(
        state, redis_queue, MemoryFairQueue(workers), capacities, timeout=config["QUEUE_TIMEOUT"],
        limit=config["QUEUE_MAX"], fair=config["QUEUE_POLICY"] == "fair")
