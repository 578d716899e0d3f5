"""The Redis outage policy: fail open (fallback, warning, signal) or closed (503); fast, never a 500."""
from __future__ import annotations

import logging

import pytest
import redis

from app.access.shared_state import SharedState, connect, degraded
from app.errors import Unavailable
from bench.processes import free_port


@pytest.fixture
def dead_redis():
    return connect(f"redis://127.0.0.1:{free_port()}/0", timeout=1)


@pytest.fixture
def degraded_ops():
    seen = []

    def record(sender, operation):
        seen.append(operation)

    degraded.connect(record)
    yield seen
    degraded.disconnect(record)


def test_fail_open_serves_the_fallback_warns_once_and_signals(dead_redis, degraded_ops, caplog):
    state = SharedState(dead_redis, fail_open=True)
    attempts = []

    def redis_call():
        attempts.append(1)
        return dead_redis.get("x")

    with caplog.at_level(logging.WARNING, logger="app.access.shared_state"):
        assert [state.call("op", redis_call, lambda: "memory") for _ in range(3)] == ["memory"] * 3
    assert len(attempts) == 1, "a Redis that just failed is left alone for a moment"
    assert degraded_ops == ["op", "op", "op"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "Redis unreachable" in warnings[0] and "open" in warnings[0]


def test_fail_closed_is_a_503_with_retry_after(dead_redis, degraded_ops):
    state = SharedState(dead_redis, fail_open=False)
    with pytest.raises(Unavailable) as caught:
        state.call("op", lambda: dead_redis.get("x"), lambda: "memory")
    assert caught.value.status == 503 and caught.value.code == "redis_unavailable"
    assert caught.value.headers["Retry-After"] == "1"
    state.best_effort("release", lambda: dead_redis.delete("x"))  # a release never raises
    assert degraded_ops == ["op", "release"]


def test_without_redis_configured_the_fallback_is_the_normal_path(degraded_ops):
    assert SharedState(None, fail_open=False).call("op", lambda: "redis", lambda: "memory") == "memory"
    assert degraded_ops == []


def test_recovery_is_noticed_and_logged(redis_server, redis_client, caplog, monkeypatch):
    state = SharedState(connect(redis_server.url, timeout=1), fail_open=True)
    monkeypatch.setattr("app.access.shared_state.RECHECK_AFTER", 0.0)
    failing = iter([True, False])

    def redis_call():
        if next(failing):
            raise redis.ConnectionError("simulated")
        return redis_client.ping()

    with caplog.at_level(logging.WARNING, logger="app.access.shared_state"):
        assert state.call("op", redis_call, lambda: "memory") == "memory"
        assert state.call("op", redis_call, lambda: "memory") is True
    assert "reachable again" in caplog.records[-1].getMessage()
