"""A replica's life: ejected after failures, out for the cooldown, back gradually; its load estimate."""
from __future__ import annotations

import pytest

from app.upstream.load import Load
from app.upstream.replicas import EJECTED, HEALTHY, RECOVERING, HealthPolicy, Replica
from app.upstream.specs import ReplicaSpec

POLICY = HealthPolicy(eject_after=3, cooldown=10.0, recovery=30.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def replica(clock):
    return Replica(ReplicaSpec("http://a:8000", weight=2.0), client=None, policy=POLICY, clock=clock)


def test_consecutive_failures_eject_and_a_success_resets_the_count(replica):
    replica.record_failure("upstream_500", "boom")
    replica.record_failure("upstream_500", "boom")
    replica.record_success()
    replica.record_failure("upstream_unreachable", "refused")
    replica.record_failure("upstream_unreachable", "refused")
    assert replica.serving()
    replica.record_failure("upstream_unreachable", "refused")
    assert replica.current_state() == EJECTED and not replica.serving()
    assert replica.failures == {"upstream_500": 2, "upstream_unreachable": 3}
    assert "refused" in replica.reason


def test_returns_only_after_cooldown_and_a_passing_check_then_ramps_up(replica, clock):
    replica.health_failed("answered 503")
    assert replica.current_state() == EJECTED
    clock.now += 5
    replica.health_passed()
    assert replica.current_state() == EJECTED, "the cooldown is not over"
    clock.now += 5
    replica.health_passed()
    assert replica.current_state() == RECOVERING
    assert replica.effective_weight() == pytest.approx(0.2)  # a tenth of weight 2
    clock.now += 15
    assert replica.effective_weight() == pytest.approx(1.0)  # half way
    clock.now += 15
    assert replica.current_state() == HEALTHY and replica.effective_weight() == 2.0


def test_a_failure_while_recovering_ejects_again_at_once(replica, clock):
    replica.eject("test")
    clock.now += POLICY.cooldown
    replica.health_passed()
    replica.record_failure("upstream_overloaded", "503")
    assert replica.current_state() == EJECTED and replica.ejections == 2


def test_load_estimate_corrects_stale_figures_with_this_workers_own_requests(replica):
    assert replica.queue_estimate() == 0
    replica.acquire()
    replica.set_load(Load(running=5, waiting=3, kv_cache_usage=0.5))  # includes our one request
    replica.acquire()  # one more since the scrape
    assert replica.queue_estimate() == 9
    replica.release()
    replica.release()
    assert replica.queue_estimate() == 7  # ours are done; the others' are still there
    # 7 at the replica + 3 waiting counted again + a half-full KV cache, for weight 2
    assert replica.load_score() == pytest.approx((7 + 3 + 4 * 0.5) / 2)
