"""Routing strategies: the order in which a request tries the replicas."""
from __future__ import annotations

from collections import Counter

import pytest

from app.upstream.load import Load
from app.upstream.replicas import HealthPolicy, Replica
from app.upstream.routing import PrefixAffinity, affinity_key, make_strategy
from app.upstream.specs import ReplicaSpec

POLICY = HealthPolicy(eject_after=3, cooldown=10.0, recovery=30.0)


def replicas(*weights: float) -> list[Replica]:
    return [Replica(ReplicaSpec(f"http://r{i}:8000", weight=w), client=None, policy=POLICY)
            for i, w in enumerate(weights)]


def first_choices(strategy, pool, n, key=None) -> Counter:
    return Counter(strategy.order(pool, key)[0].url for _ in range(n))


@pytest.mark.parametrize("name", ["round_robin", "least_outstanding", "load_aware"])
def test_idle_replicas_share_by_weight(name):
    pool = replicas(2, 1, 1)
    strategy = make_strategy(name, load_factor=1.5)
    if name == "round_robin":
        assert first_choices(strategy, pool, 40) == {"http://r0:8000": 20, "http://r1:8000": 10, "http://r2:8000": 10}
    else:  # nothing in flight: ties take turns
        assert set(first_choices(strategy, pool, 30).values()) == {10}


def test_every_order_lists_each_replica_once():
    pool = replicas(1, 1, 1)
    for name in ("round_robin", "least_outstanding", "load_aware", "prefix_affinity"):
        order = make_strategy(name, load_factor=1.5).order(pool, "prefix:x")
        assert sorted(r.url for r in order) == sorted(r.url for r in pool)


def test_least_outstanding_counts_this_workers_requests_only():
    pool = replicas(1, 1)
    pool[0].acquire()
    pool[1].set_load(Load(running=50, waiting=0, kv_cache_usage=0))
    assert make_strategy("least_outstanding", load_factor=1.5).order(pool, None)[0] is pool[1]


def test_load_aware_reads_the_replicas_own_figures():
    pool = replicas(1, 1, 1)
    pool[0].acquire()  # one of ours in flight on r0
    pool[1].set_load(Load(running=4, waiting=2, kv_cache_usage=0.9))  # other gateways' work on r1
    pool[2].set_load(Load(running=0, waiting=0, kv_cache_usage=0.0))
    order = make_strategy("load_aware", load_factor=1.5).order(pool, None)
    assert [r.url for r in order] == ["http://r2:8000", "http://r0:8000", "http://r1:8000"]


def test_prefix_affinity_is_stable_and_spreads_keys():
    pool = replicas(1, 1, 1)
    strategy = make_strategy("prefix_affinity", load_factor=1.5)
    homes = {key: strategy.order(pool, key)[0].url for key in (f"prefix:{i}" for i in range(300))}
    assert all(strategy.order(pool, key)[0].url == home for key, home in homes.items())
    assert all(count > 60 for count in Counter(homes.values()).values()), "keys spread over the replicas"
    # Another process (another worker or gateway) agrees: the hash is not Python's salted hash().
    other = make_strategy("prefix_affinity", load_factor=1.5)
    assert all(other.order(replicas(1, 1, 1), key)[0].url == home for key, home in homes.items())


def test_prefix_affinity_spills_over_when_its_replica_is_much_busier():
    pool = replicas(1, 1, 1)
    strategy = PrefixAffinity(load_factor=2.0)
    placed = Counter()
    for _ in range(12):  # twelve concurrent requests with the same prefix
        chosen = strategy.order(pool, "prefix:system prompt")[0]
        chosen.acquire()
        placed[chosen.url] += 1
    home, count = placed.most_common(1)[0]
    assert count == 8, "the home replica fills up to twice the average (12 / 3 * 2)"
    assert sum(placed.values()) == 12 and len(placed) > 1


def test_affinity_key_prefers_the_session_then_the_prompt_prefix():
    assert affinity_key({"prompt": "abcdef"}, "s-1", 3) == "session:s-1"
    assert affinity_key({"prompt": "abcdef"}, None, 3) == "prefix:abc"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert affinity_key({"messages": messages}, None, 1000).startswith('prefix:[{"role": "system"')
    assert affinity_key({}, None, 3) is None
