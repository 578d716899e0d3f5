"""The fair queue's order, in Redis (the Lua scripts, on a real redis-server) and in one process; Redis outages.

Both backends are driven the same way: one slot, a holder, tickets queued behind it; each
release grants the next ticket, and the order of the grants is what is checked.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest

from app.access.fair_queue import FULL, GRANTED, UNKNOWN, WAITING, RedisFairQueue
from app.access.memory_queue import DeficitRoundRobin, MemoryFairQueue
from app.access.replica_slots import EXTENSION, Ticket
from app.errors import Unavailable
from bench.processes import free_port

POOL = "test-pool"


@pytest.fixture(params=["redis", "memory"])
def queue(request):
    if request.param == "memory":
        return MemoryFairQueue(workers=1)
    client = request.getfixturevalue("redis_client")
    return RedisFairQueue(client, client)


def grant_order(queue, entries: list[tuple[str, str, int]]) -> list[str]:
    """Queue (class, key, weight) entries behind a holder of the one slot; the keys in the order granted."""
    assert queue.enqueue(POOL, "holder", "normal", "holder", 1, 1, 1000) == GRANTED
    tickets = {f"t{i}": key for i, (_, key, _) in enumerate(entries)}
    for (ticket, (cls, key, weight)) in zip(tickets, entries, strict=True):
        assert queue.enqueue(POOL, ticket, cls, key, weight, 1, 1000) == WAITING
    order, holder = [], "holder"
    for _ in entries:
        queue.leave(POOL, holder, 1)
        granted = [t for t in tickets if queue.poll(POOL, t, 1) == GRANTED]
        assert len(granted) == 1, granted  # one slot: exactly one ticket holds it
        holder = granted[0]
        order.append(holder)
        del tickets[holder]
    return order


def test_weights_share_the_slots_three_to_one(queue):
    entries = [("normal", "heavy", 3)] * 12 + [("normal", "light", 1)] * 12
    keys = [f"t{i}" for i in range(24)]
    order = grant_order(queue, entries)
    first16 = Counter("heavy" if keys.index(t) < 12 else "light" for t in order[:16])
    assert first16 == {"heavy": 12, "light": 4}


def test_a_key_that_joins_late_waits_for_one_turn_not_the_whole_queue(queue):
    entries = [("normal", "flood", 1)] * 10 + [("normal", "late", 1)]
    order = grant_order(queue, entries)
    assert order.index("t10") <= 1  # not behind the flood's 10


def test_classes_are_strict_and_keys_are_fifo(queue):
    entries = [("low", "batch", 1)] * 3 + [("normal", "app", 1)] * 2 + [("high", "urgent", 1)] * 2
    assert grant_order(queue, entries) == ["t5", "t6", "t3", "t4", "t0", "t1", "t2"]


def test_four_equal_keys_take_turns(queue):
    entries = [("normal", f"k{k}", 1) for k in range(4) for _ in range(4)]
    order = grant_order(queue, entries)
    rounds = [sorted(int(t[1:]) // 4 for t in order[i:i + 4]) for i in range(0, 16, 4)]
    assert rounds == [[0, 1, 2, 3]] * 4


def test_a_ticket_that_leaves_is_never_granted(queue):
    assert queue.enqueue(POOL, "holder", "normal", "a", 1, 1, 10) == GRANTED
    for ticket in ("w1", "w2"):
        assert queue.enqueue(POOL, ticket, "normal", "a", 1, 1, 10) == WAITING
    queue.leave(POOL, "w1", 1)
    assert queue.poll(POOL, "w1", 1) == UNKNOWN
    queue.leave(POOL, "holder", 1)
    assert queue.poll(POOL, "w2", 1) == GRANTED


def test_a_full_queue_refuses(queue):
    assert queue.enqueue(POOL, "holder", "normal", "a", 1, 1, 2) == GRANTED
    assert [queue.enqueue(POOL, f"w{i}", "normal", "a", 1, 1, 2) for i in range(3)] == [WAITING, WAITING, FULL]


def test_capacity_is_counted_not_per_call(queue):
    answers = [queue.enqueue(POOL, f"t{i}", "normal", f"k{i}", 1, 3, 10) for i in range(5)]
    assert answers == [GRANTED] * 3 + [WAITING] * 2


def test_without_redis_each_worker_runs_its_share():
    queue = MemoryFairQueue(workers=2)
    assert (queue.share(8), queue.share(3), queue.share(1)) == (4, 1, 1)
    answers = [queue.enqueue(POOL, f"t{i}", "normal", "k", 1, 8, 10) for i in range(6)]
    assert answers == [GRANTED] * 4 + [WAITING] * 2


def test_deficit_round_robin_forgets_a_key_whose_tickets_all_left():
    order = DeficitRoundRobin()
    order.add("a1", "normal", "a", 5)
    order.add("b1", "normal", "b", 1)
    assert order.remove("a1") and not order.remove("a1")
    assert order.pop() == "b1" and order.pop() is None
    assert not order.queues and not order.deficit and not any(order.rings.values())


def test_redis_slots_and_waiting_tickets_expire(redis_client):
    queue = RedisFairQueue(redis_client, redis_client)
    queue._lease_ms = 300  # noqa: SLF001 - a short lease instead of waiting SLOT_LEASE
    assert queue.enqueue(POOL, "dead-holder", "normal", "a", 1, 1, 10) == GRANTED
    assert queue.enqueue(POOL, "dead-waiter", "normal", "a", 1, 1, 10) == WAITING
    time.sleep(0.5)  # nothing renews them
    # Both leases ran out: the slot is free again and the dead waiter is not in front.
    assert queue.enqueue(POOL, "alive", "normal", "b", 1, 1, 10) == GRANTED
    assert queue.poll(POOL, "dead-waiter", 1) == UNKNOWN


def slots_of(make_app, redis_url: str, **settings):
    app = make_app(REDIS_URL=redis_url, REPLICA_CAPACITY=1, WORKERS=1, QUEUE_TIMEOUT=0.2, **settings)
    return app, app.extensions[EXTENSION]


def test_with_redis_down_and_failing_open_the_worker_counts_its_own_slots(make_app):
    app, slots = slots_of(make_app, f"redis://127.0.0.1:{free_port()}/0")
    with app.test_request_context("/v1/completions"):
        held = slots.take(Ticket(POOL, 1, "normal", "a", 1), key_name=None, environ={})
        assert held.ticket.queue is slots.memory
        with pytest.raises(Unavailable) as refused:  # the one slot is this worker's, and held
            slots.take(Ticket(POOL, 1, "normal", "b", 1), key_name=None, environ={})
        assert refused.value.code == "queue_timeout" and refused.value.headers["Retry-After"] == "1"
        held.release()
        assert slots.take(Ticket(POOL, 1, "normal", "b", 1), key_name=None, environ={}).ticket.queue is slots.memory


def test_with_redis_down_and_failing_closed_nothing_is_admitted(make_app):
    app, slots = slots_of(make_app, f"redis://127.0.0.1:{free_port()}/0", REDIS_FAILURE_MODE="closed")
    with app.test_request_context("/v1/completions"), pytest.raises(Unavailable) as refused:
        slots.take(Ticket(POOL, 1, "normal", "a", 1), key_name=None, environ={})
    assert refused.value.code == "redis_unavailable"


def test_a_granted_turn_is_renewed_and_given_back_in_redis(make_app, redis_server, redis_client):
    app, slots = slots_of(make_app, redis_server.url)
    with app.test_request_context("/v1/completions"):
        turn = slots.take(Ticket(POOL, 1, "high", "a", 1), key_name="a", environ={})
    assert turn.ticket.queue is slots.redis
    assert redis_client.zrange(f"sluice:fq:{POOL}:slots", 0, -1) == [turn.ticket.id.encode()]
    slots._renew(POOL, [turn.ticket.id])  # noqa: SLF001 - what the renewing greenlet does every 2 s
    turn.release()
    turn.release()  # once only
    assert redis_client.zcard(f"sluice:fq:{POOL}:slots") == 0
