"""Failover, ejection and model routing through the API, against in-process simulators as replicas."""
from __future__ import annotations

import json
import threading

import pytest

from bench.simulator import SimConfig, SimulatorThread
from tests.unit.test_errors import assert_error_shape

BODY = {"prompt": "hello there", "max_tokens": 4}


@pytest.fixture
def sims():
    """Start simulators on demand; stop them all after the test."""
    started = []

    def start(**config) -> SimulatorThread:
        sim = SimulatorThread(SimConfig(port=0, **config)).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def client_for(make_app, *replicas: SimulatorThread, **overrides):
    settings = {"UPSTREAM_URL": ",".join(s.url for s in replicas), "ROUTING_STRATEGY": "round_robin", **overrides}
    return make_app(**settings).test_client()


def replica_states(client) -> dict[str, str]:
    return {r["url"]: r["state"] for r in client.application.extensions["sluice.upstream"].snapshot()}


def test_overloaded_replica_is_failed_over_then_ejected(make_app, sims):
    busy, good = sims(fault="status_503"), sims()
    client = client_for(make_app, busy, good)
    replies = [client.post("/v1/generate", json=BODY) for _ in range(8)]
    assert [r.status_code for r in replies] == [200] * 8
    assert busy.stats.requests_total == 3, "ejected after three failures, then left alone"
    assert good.stats.completed == 8
    assert replica_states(client) == {busy.url: "ejected", good.url: "healthy"}


def test_client_fault_is_not_retried(make_app, sims):
    picky, good = sims(fault="status_400"), sims()
    client = client_for(make_app, picky, good)
    assert_error_shape(client.post("/v1/generate", json=BODY), 400, "upstream_400")
    assert good.stats.requests_total == 0
    assert replica_states(client)[picky.url] == "healthy"


def test_tries_are_bounded_and_the_last_error_is_returned(make_app, sims):
    first, second, third = sims(fault="status_503"), sims(fault="status_500"), sims()
    client = client_for(make_app, first, second, third, FAILOVER_TRIES=2)
    assert_error_shape(client.post("/v1/generate", json=BODY), 502, "upstream_500")
    assert (first.stats.requests_total, second.stats.requests_total, third.stats.requests_total) == (1, 1, 0)


@pytest.mark.parametrize("budget, status", [(0.1, 504), (10.0, 200)])
def test_no_new_try_starts_after_the_budget(make_app, sims, budget, status):
    hung, good = sims(fault="hang_headers"), sims()
    client = client_for(make_app, hung, good, UPSTREAM_READ_TIMEOUT=0.3, FAILOVER_BUDGET=budget)
    assert client.post("/v1/generate", json=BODY).status_code == status
    assert good.stats.requests_total == (status == 200)


def test_stream_whose_replica_dies_before_its_first_event_continues_elsewhere(make_app, sims):
    doomed, good = sims(ttft=30), sims()
    client = client_for(make_app, doomed, good)

    def kill_once_queued():
        doomed.wait_for(lambda s: s.waiting == 1)
        doomed.stop()

    killer = threading.Thread(target=kill_once_queued)
    killer.start()
    reply = client.post("/v1/generate/stream", json=BODY)
    body = reply.get_data()
    killer.join()
    assert reply.status_code == 200
    events = [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
    assert [e["text"] for e in events if e.get("text")] == [" tok1", " tok2", " tok3", " tok4"]
    assert body.endswith(b"data: [DONE]\n\n")
    assert good.stats.completed == 1


def test_models_route_to_their_replicas_and_an_unknown_model_is_404(make_app, sims, tmp_path):
    alpha, beta = sims(models=("alpha",)), sims(models=("beta", "gamma"))
    path = tmp_path / "upstreams.json"
    path.write_text(json.dumps({"upstreams": [{"url": alpha.url, "models": ["alpha"]},
                                              {"url": beta.url, "models": ["beta", "gamma"]}]}))
    client = make_app(UPSTREAM_URL="", UPSTREAMS_FILE=str(path), MODEL="").test_client()
    for model in ("beta", "gamma", "beta"):
        assert client.post("/v1/generate", json={**BODY, "model": model}).json["model"] == model
    assert (alpha.stats.requests_total, beta.stats.requests_total) == (0, 3)
    assert client.post("/v1/generate", json=BODY).json["model"] == "alpha", "default: the first replica's first"
    error = assert_error_shape(client.post("/v1/generate", json={**BODY, "model": "delta"}), 404, "model_not_found")
    assert error["param"] == "model" and "alpha, beta, gamma" in error["message"]


def test_readyz_lists_replicas_and_is_503_when_none_can_serve(make_app, sims):
    one, two = sims(), sims()
    client = client_for(make_app, one, two)
    ready = client.get("/readyz").json
    assert [(r["url"], r["state"], r["models"]) for r in ready["replicas"]] == [
        (one.url, "healthy", ["sim-model"]), (two.url, "healthy", ["sim-model"])]
    one.stop()
    assert {r["url"]: r["state"] for r in client.get("/readyz").json["replicas"]}[one.url] == "ejected"
    two.stop()
    error = assert_error_shape(client.get("/readyz"), 503, "upstream_not_ready")
    assert one.url in error["message"] and two.url in error["message"]
