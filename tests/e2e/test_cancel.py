"""A client that leaves frees the engine: vLLM's own running + waiting count drops within 2 s.

The engine runs at most two sequences (clients.MAX_NUM_SEQS), so a third request really
waits in vLLM's queue: the case where no token ever reaches the gateway to write.
"""
from __future__ import annotations

import pytest

from tests.e2e.clients import LONG_PROMPT, MAX_NUM_SEQS, RawStream, in_flight, wait_for_load

pytestmark = pytest.mark.e2e

FREED_WITHIN = 2.0
LONG = {"prompt": LONG_PROMPT, "max_tokens": 400, "temperature": 0}


@pytest.fixture
def idle_engine(engine) -> float:
    """Wait until what earlier tests sent has finished; the engine's running + waiting count then."""
    held, load, _ = wait_for_load(engine.spec.url, lambda load: in_flight(load) == 0, timeout=60)
    assert held, f"the engine is still busy before the test: {load}"
    return in_flight(load)


def test_leaving_a_generating_stream_stops_its_generation(gateway, engine, idle_engine):
    client = RawStream(gateway.url, "/v1/generate/stream", LONG)
    try:
        assert client.read_events(3) >= 3, client.received[-500:]
        held, load, _ = wait_for_load(engine.spec.url, lambda load: load["running"] >= 1, timeout=5)
        assert held, f"the request is not running in the engine: {load}"
    finally:
        client.close()
    held, load, waited = wait_for_load(engine.spec.url, lambda load: in_flight(load) == idle_engine,
                                       timeout=FREED_WITHIN)
    assert held, f"{load} {waited:.2f} s after the client left"


def test_leaving_a_queued_request_removes_it_from_the_queue(gateway, engine, idle_engine):
    # Fill every running slot with requests sent straight to the engine, read as live clients do.
    occupiers = [RawStream(engine.spec.url, "/v1/completions",
                           {**LONG, "model": engine.spec.served_model_name, "stream": True,
                            "max_tokens": 1000, "ignore_eos": True}) for _ in range(MAX_NUM_SEQS)]
    try:
        for occupier in occupiers:
            occupier.drain()
        held, load, _ = wait_for_load(engine.spec.url, lambda load: load["running"] == MAX_NUM_SEQS, timeout=30)
        assert held, f"the occupiers are not running: {load}"

        client = RawStream(gateway.url, "/v1/generate/stream", LONG)
        try:
            held, load, _ = wait_for_load(engine.spec.url, lambda load: load["waiting"] >= 1, timeout=10)
            assert held, f"the gateway's request is not queued in the engine: {load}"
        finally:
            client.close()
        held, load, waited = wait_for_load(
            engine.spec.url, lambda load: load["waiting"] == 0 and in_flight(load) == idle_engine + MAX_NUM_SEQS,
            timeout=FREED_WITHIN)
        assert held, f"{load} {waited:.2f} s after the queued client left"
    finally:
        for occupier in occupiers:
            occupier.close()
    held, load, _ = wait_for_load(engine.spec.url, lambda load: in_flight(load) == idle_engine, timeout=30)
    assert held, f"the occupiers were not cancelled: {load}"
