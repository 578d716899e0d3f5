"""Admission: the per-worker gate (bounded queue, timed wait), token estimates and settlement."""
from __future__ import annotations

import gevent
import pytest

from app.access.admission import Admitter, WorkerGate, prompt_estimate
from app.access.shared_state import SharedState
from app.errors import RateLimited, Unavailable
from app.exchange import COMPLETED, Exchange


def test_gate_queues_a_bounded_number_then_refuses_at_once():
    gate = WorkerGate(slots=1, queue=1, timeout=5)
    assert gate.try_enter()
    waiter = gevent.spawn(gate.wait)
    gevent.sleep(0)  # let it queue
    assert gate.waiting == 1
    with pytest.raises(Unavailable) as full:
        gate.wait()
    assert full.value.code == "gateway_full" and full.value.headers["Retry-After"] == "5"
    gate.leave()
    waiter.get(timeout=1)  # admitted once the slot was given back
    assert gate.waiting == 0


def test_gate_wait_times_out_with_503():
    gate = WorkerGate(slots=1, queue=4, timeout=0.05)
    assert gate.try_enter()
    with pytest.raises(Unavailable) as busy:
        gate.wait()
    assert busy.value.code == "gateway_busy" and busy.value.headers["Retry-After"] == "1"
    assert gate.waiting == 0


@pytest.mark.parametrize("payload, tokens", [
    ({"prompt": "12345678"}, 2),
    ({"prompt": ["1234", "12345"]}, 3),
    ({"prompt": [101, 102, 103]}, 3),
    ({"messages": [{"role": "user", "content": "12345678"},
                   {"role": "user", "content": [{"type": "text", "text": "1234"}]}]}, 3),
    ({}, 0),
])
def test_prompt_estimate(payload, tokens):
    assert prompt_estimate(payload) == tokens


def exchange(**usage) -> Exchange:
    record = Exchange(request_id="r", route="/v1/generate", model="m", stream=True)
    record.prompt_tokens = usage.get("prompt", 0)
    record.arrivals.extend(float(i) for i in range(usage.get("events", 0)))  # events relayed
    record.completion_tokens = usage.get("completion", 0)
    return record


@pytest.fixture
def admitter():
    return Admitter(SharedState(None, fail_open=True), WorkerGate(4, 0, 1), token_window=60, slot_ttl=60)


def admit(admitter, **limits):
    return admitter.admit("key:k", prompt=10, estimate=110, tpm=limits.get("tpm", 1000),
                          max_concurrent=limits.get("max_concurrent", 1), environ={})


@pytest.mark.parametrize("finished_as, charged", [
    (dict(prompt=12, completion=40), 52),  # the upstream's usage
    (dict(events=7), 17),  # a stream cut before its usage chunk: relayed events + estimated prompt
    (dict(), 0),  # nothing reached the upstream
])
def test_reservation_is_settled_to_what_was_used(admitter, finished_as, charged):
    held = admit(admitter)
    record = exchange(**finished_as)
    record.admission = held
    record.finish(COMPLETED)  # the `finished` signal releases it
    assert admitter.memory.reserve("sluice:tokens:key:k", 0, 1000, 60) == (True, charged)
    assert admit(admitter).slot, "the key's slot was given back"


def test_over_the_key_cap_is_429_and_holds_nothing(admitter):
    admit(admitter)
    with pytest.raises(RateLimited) as caught:
        admit(admitter)
    assert caught.value.code == "concurrency_limit_exceeded" and caught.value.headers["Retry-After"] == "1"
    assert admitter.memory.reserve("sluice:tokens:key:k", 0, 1000, 60) == (True, 110), "no tokens held"


def test_spent_tokens_are_429_and_give_back_the_slot(admitter):
    admit(admitter, tpm=150)
    with pytest.raises(RateLimited) as caught:
        admit(admitter, tpm=150, max_concurrent=2)
    assert caught.value.code == "token_limit_exceeded"
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
    assert admit(admitter, tpm=1000, max_concurrent=2).slot, "the refused request's slot was given back"
