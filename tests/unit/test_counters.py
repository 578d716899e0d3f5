"""Token windows and in-flight slots behave the same in Redis (Lua) and in memory (the fallback)."""
from __future__ import annotations

import time

import gevent
import pytest

from app.access.counters import MemoryCounters, RedisCounters, Slot, Tokens


@pytest.fixture(params=["memory", "redis"])
def counters(request):
    if request.param == "memory":
        return MemoryCounters()
    return RedisCounters(request.getfixturevalue("redis_client"))


def test_reservations_fit_under_the_limit_then_wait_for_the_window(counters):
    assert counters.reserve("t", 60, 100, 30) == (True, 60)
    fits, wait = counters.reserve("t", 60, 100, 30)
    assert not fits and 0 < wait <= 30
    assert counters.reserve("t", 40, 100, 30) == (True, 100)
    assert counters.reserve("other", 100, 100, 30)[0], "windows are per bucket"


def test_settling_corrects_the_reservation(counters):
    counters.reserve("t", 90, 100, 30)
    counters.settle("t", -80)  # the generation used 10, not 90
    assert counters.reserve("t", 85, 100, 30) == (True, 95)


def test_a_new_window_starts_when_the_old_one_ends(counters):
    counters.reserve("t", 100, 100, 0.2)
    assert not counters.reserve("t", 1, 100, 0.2)[0]
    time.sleep(0.25)
    counters.settle("t", 50)  # a late settlement does not revive an ended window
    assert counters.reserve("t", 100, 100, 0.2) == (True, 100)


def test_slots_up_to_the_cap_then_freed_by_release(counters):
    assert counters.take_slot("s", "a", 2, 30) and counters.take_slot("s", "b", 2, 30)
    assert not counters.take_slot("s", "c", 2, 30)
    counters.give_slot("s", "a")
    assert counters.take_slot("s", "c", 2, 30)


def test_a_slot_never_released_expires_on_its_own(counters):
    assert counters.take_slot("s", "lost", 1, 0.2)
    assert not counters.take_slot("s", "next", 1, 0.2)
    time.sleep(0.25)
    assert counters.take_slot("s", "next", 1, 0.2)


def test_hold_takes_slot_and_tokens_together_or_neither(counters):
    slot = lambda name: Slot("s", name, cap=2, ttl=30)  # noqa: E731
    assert counters.hold(slot("a"), Tokens("t", 60, 100, 30)) == (True, True, 60)
    taken, fits, wait = counters.hold(slot("b"), Tokens("t", 60, 100, 30))
    assert (taken, fits) == (True, False) and 0 < wait <= 30  # the tokens did not fit: slot b given back
    assert counters.hold(slot("c"), Tokens("t", 40, 100, 30)) == (True, True, 100)
    assert counters.hold(slot("d"), Tokens("t", 0, 0)) == (False, False, 0), "a and c hold the cap of 2"
    counters.release(Slot("s", "a"), Tokens("t", -50))
    assert counters.hold(slot("e"), Tokens("t", 50, 100, 30)) == (True, True, 100), "a's slot and 50 tokens back"


def test_batched_releases_reach_redis_in_one_pipeline(redis_client):
    from app.access.releases import BatchedReleases
    from app.access.shared_state import SharedState

    counters = RedisCounters(redis_client)
    for name in "abc":
        assert counters.hold(Slot("s", name, cap=3, ttl=30), Tokens("t", 30, 100, 30))[:2] == (True, True)
    releases = BatchedReleases(counters, SharedState(redis_client, fail_open=True))
    for name in "abc":
        releases.add(Slot("s", name), Tokens("t", -10))
    assert redis_client.zcard("s") == 3, "nothing sent before the event loop turns"
    gevent.sleep(0)
    assert redis_client.zcard("s") == 0 and int(redis_client.get("t")) == 60
    redis_client.script_flush()  # Redis restarted: the pipeline finds no script, the releases load it again
    counters.hold(Slot("s", "d", cap=3, ttl=30), Tokens("t", 1, 100, 30))
    releases.add(Slot("s", "d"), Tokens("t", 0))
    releases.add(Slot("s", "x"), Tokens("t", 5))
    redis_client.script_flush()
    gevent.sleep(0)
    assert redis_client.zcard("s") == 0 and int(redis_client.get("t")) == 66
