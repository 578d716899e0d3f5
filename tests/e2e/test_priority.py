"""A high-priority key's request overtakes low-priority ones queued before it, on the real engine.

Two places may hold the queue: the gateway (SLUICE_REPLICA_CAPACITY equal to the engine's
max-num-seqs: the excess waits in the fair queue) and vLLM itself (no capacity at the
gateway: the excess waits in vLLM, which the gateway has sent each key's class as its
`priority` field; the engine runs with `--scheduling-policy priority`). Either way, of
five low-priority generations sent first (two running, three queued) and one high-priority
one sent last, the high one is answered before the last two low ones; first come first
served would answer it last.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway, wait_until
from tests.e2e.clients import LONG_PROMPT, MAX_NUM_SEQS, in_flight, wait_for_load

pytestmark = pytest.mark.e2e

LOWS = 5
BODY = {"model": "smollm2", "prompt": LONG_PROMPT, "max_tokens": 24, "temperature": 0}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def secrets(keys_file: Path) -> dict[str, str]:
    ring = KeyRing(FileKeyStore(keys_file), None)
    return {name: ring.create(name, priority=name)[0] for name in ("low", "high")}


@pytest.fixture(params=["gateway-queue", "engine-queue"])
def priority_gateway(request: pytest.FixtureRequest, engine, secrets, keys_file, tmp_path_factory) -> Iterator[Gateway]:
    capacity = MAX_NUM_SEQS if request.param == "gateway-queue" else 0
    gw = Gateway({"SLUICE_UPSTREAM_URL": engine.spec.url, "SLUICE_UPSTREAM_SCHEDULING_POLICY": "priority",
                  "SLUICE_KEYS_FILE": str(keys_file), "SLUICE_REPLICA_CAPACITY": str(capacity)},
                 log=tmp_path_factory.mktemp("gateway") / f"gateway-{request.param}.log")
    gw.queue_place = request.param  # type: ignore[attr-defined]
    yield gw
    gw.stop()


def gateway_waiting(gw: Gateway) -> float:
    """Requests waiting in the gateway's fair queue, from its /metrics."""
    text = requests.get(gw.url + "/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^sluice_queue_waiting_requests\{[^}]*\} (\S+)$", text, re.M))


def test_high_priority_overtakes_queued_low_priority(priority_gateway, engine, secrets):
    held, load, _ = wait_for_load(engine.spec.url, lambda load: in_flight(load) == 0, timeout=120)
    assert held, f"the engine is still busy before the test: {load}"
    answered: list[str] = []
    statuses: list[int] = []

    def send(key: str) -> threading.Thread:
        def run() -> None:
            response = requests.post(priority_gateway.url + "/v1/completions", json=BODY, timeout=300,
                                     headers={"Authorization": f"Bearer {secrets[key]}"})
            statuses.append(response.status_code)
            answered.append(key)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    threads = [send("low") for _ in range(LOWS)]
    queued = LOWS - MAX_NUM_SEQS
    if priority_gateway.queue_place == "gateway-queue":
        wait_until(lambda: gateway_waiting(priority_gateway) == queued, 30, f"{queued} requests in the gateway queue")
    else:
        held, load, _ = wait_for_load(engine.spec.url, lambda load: load["waiting"] == queued, timeout=30)
        assert held, f"the low-priority requests are not queued in the engine: {load}"
    threads.append(send("high"))
    for thread in threads:
        thread.join(300)
    assert statuses == [200] * (LOWS + 1)
    # First come first served: the high one last (index 5). By priority: with the first queued one.
    assert answered.index("high") <= LOWS - 2, answered
