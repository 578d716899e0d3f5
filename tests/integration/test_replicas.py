"""Several replicas behind one gateway (real gunicorn, simulator processes): routing, health, failover."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import requests

from bench.processes import Gateway, Simulator, wait_until
from bench.sse_client import stream


@contextmanager
def cluster(logs, replicas: list[list[str]], **settings: str) -> Iterator[tuple[Gateway, list[Simulator]]]:
    """One simulator per argument list, and a one-worker gateway in front of all of them."""
    sims: list[Simulator] = []
    gateway = None
    try:
        for i, args in enumerate(replicas):
            sims.append(Simulator(*args, log=logs / f"replica-{i}.log"))
        gateway = Gateway({"SLUICE_UPSTREAM_URL": ",".join(s.url for s in sims), "SLUICE_MODEL": "",
                           **{f"SLUICE_{k}": v for k, v in settings.items()}}, log=logs / "gateway.log")
        yield gateway, sims
    finally:
        if gateway is not None:
            gateway.stop()
        for sim in sims:
            sim.stop()


def generate(gateway: Gateway, body: dict) -> tuple[int, dict]:
    """Status and JSON body of a blocking generation; the connection is closed before returning.

    (A response kept alive keeps its connection open, and gunicorn's graceful stop waits for it.)
    """
    with requests.post(gateway.url + "/v1/generate", json=body, timeout=60) as reply:
        return reply.status_code, reply.json()


def served(sims: list[Simulator]) -> list[int]:
    return [sim.stats()["requests_total"] for sim in sims]


def replica_states(gateway: Gateway) -> dict[str, str]:
    reply = requests.get(gateway.url + "/readyz", timeout=10)
    return {r["url"]: r["state"] for r in reply.json()["replicas"]}


def test_load_aware_sends_a_slow_replica_much_less_than_a_third(tmp_path):
    fast, slow = ["--itl", "0.005"], ["--itl", "0.05", "--max-num-seqs", "2"]
    with cluster(tmp_path, [fast, fast, slow], HEALTH_INTERVAL="0.2") as (gateway, sims):
        with ThreadPoolExecutor(max_workers=12) as clients:
            replies = list(clients.map(lambda i: generate(gateway, {"prompt": f"q {i}", "max_tokens": 10}),
                                       range(60)))
        assert [status for status, _ in replies] == [200] * 60
        counts = served(sims)
    assert sum(counts) == 60
    # Round-robin would send it 20; it takes ten times longer per request.
    assert counts[2] < 60 * 0.2, counts


def test_load_aware_sees_load_from_other_gateways_in_vllm_metrics(tmp_path):
    with cluster(tmp_path, [[], [], ["--itl", "1"]], HEALTH_INTERVAL="0.2") as (gateway, sims):
        busy = sims[2]
        # Another gateway's work: long streams sent to the third replica directly.
        others = [requests.post(busy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 100,
                                                                    "stream": True}, stream=True, timeout=30)
                  for _ in range(4)]
        try:
            wait_until(lambda: _running_seen(gateway, busy.url) == 4, 10, "the scrape of the busy replica")
            for i in range(12):
                assert generate(gateway, {"prompt": f"q {i}", "max_tokens": 2})[0] == 200
            assert busy.stats()["requests_total"] == 4, "nothing of ours went to the busy replica"
        finally:
            for reply in others:
                reply.close()


def _running_seen(gateway: Gateway, url: str) -> float | None:
    replicas = requests.get(gateway.url + "/readyz", timeout=10).json()["replicas"]
    return next(r["running"] for r in replicas if r["url"] == url)


def test_killed_replica_loses_no_request_that_had_not_started(tmp_path):
    replica = ["--itl", "0.01"]
    with cluster(tmp_path, [replica, replica, replica]) as (gateway, sims):
        victim = sims[1]

        def one(i: int):
            body = {"prompt": f"request {i}", "max_tokens": 30}
            if i % 4 == 0:
                return generate(gateway, body)
            return stream(gateway.url + "/v1/generate/stream", body, timeout=60)

        with ThreadPoolExecutor(max_workers=50) as clients:
            futures = [clients.submit(one, i) for i in range(200)]
            wait_until(lambda: victim.stats()["running"] >= 5, 30, "streams running on the victim")
            victim.stop(signal.SIGKILL)
            results = [f.result() for f in futures]

    blocking = [r for i, r in enumerate(results) if i % 4 == 0]
    streams = [r for i, r in enumerate(results) if i % 4]
    assert [status for status, _ in blocking] == [200] * 50, "a blocking request has not started: it fails over"
    assert [r.status for r in streams] == [200] * 150
    assert all(r.done for r in streams), "every stream ends with [DONE]"
    complete = [r for r in streams if len(r.text_events) == 30 and "usage" in r.events[-2]]
    cut = [r for r in streams if "error" in r.events[-2]]
    assert len(complete) + len(cut) == 150
    assert cut, "the replica was killed while streams were running on it"
    assert all(r.text_events for r in cut), "only streams that had started end with an error event"


def test_replica_answering_503_is_ejected_and_returns_after_its_cooldown(tmp_path):
    settings = {"HEALTH_INTERVAL": "0.2", "EJECT_COOLDOWN": "3", "RECOVERY_SECONDS": "1"}
    with cluster(tmp_path, [[], [], ["--fault", "status_503"]], **settings) as (gateway, sims):
        sick = sims[2]
        replies = [generate(gateway, {"prompt": f"q {i}", "max_tokens": 2}) for i in range(20)]
        assert [status for status, _ in replies] == [200] * 20, "its requests succeed on the others"
        assert sick.stats()["requests_total"] == 3, "ejected after three consecutive failures"
        assert replica_states(gateway)[sick.url] == "ejected"

        sick.stop()
        cured = Simulator(port=sick.port, log=tmp_path / "cured.log")
        sims.append(cured)  # stopped by cluster()
        wait_until(lambda: replica_states(gateway)[cured.url] in ("recovering", "healthy"), 10, "its return")
        for i in range(30):
            assert generate(gateway, {"prompt": f"again {i}", "max_tokens": 2})[0] == 200
        assert cured.stats()["completed"] > 0, "it takes requests again"


def test_requests_go_only_to_replicas_that_serve_their_model(tmp_path):
    replicas = [["--models", "alpha"], ["--models", "alpha,beta"], ["--models", "beta"]]
    with cluster(tmp_path, replicas) as (gateway, sims):
        for i in range(9):
            assert generate(gateway, {"prompt": f"a {i}", "model": "alpha", "max_tokens": 2})[1]["model"] == "alpha"
        after_alpha = served(sims)
        for i in range(9):
            assert generate(gateway, {"prompt": f"b {i}", "model": "beta", "max_tokens": 2})[1]["model"] == "beta"
        after_beta = served(sims)
        status, body = generate(gateway, {"prompt": "c", "model": "delta", "max_tokens": 2})
    assert after_alpha[2] == 0 and after_alpha[0] > 0 and after_alpha[1] > 0
    assert after_beta[0] == after_alpha[0] and after_beta[2] > 0
    assert status == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"


def test_prefix_affinity_keeps_a_prefix_on_one_replica_within_the_load_bound(tmp_path):
    settings = {"ROUTING_STRATEGY": "prefix_affinity", "AFFINITY_PREFIX_CHARS": "40", "AFFINITY_LOAD_FACTOR": "2"}
    system = "You are a terse assistant for the Sluice docs. "  # longer than the 40 characters compared
    with cluster(tmp_path, [["--itl", "0.02"]] * 3, **settings) as (gateway, sims):
        for i in range(15):
            assert generate(gateway, {"prompt": f"{system}Question {i}?", "max_tokens": 2})[0] == 200
        sequential = served(sims)
        assert sorted(sequential) == [0, 0, 15], "one replica takes every request with the prefix"
        home = sims[sequential.index(15)]

        with ThreadPoolExecutor(max_workers=12) as clients:
            futures = [clients.submit(stream, gateway.url + "/v1/generate/stream",
                                      {"prompt": f"{system}Long {i}", "max_tokens": 100}) for i in range(12)]
            wait_until(lambda: sum(s.stats()["running"] for s in sims) == 12, 20, "twelve concurrent streams")
            running = [s.stats()["running"] for s in sims]
            assert all(f.result().done for f in futures)
    at_home = running[sims.index(home)]
    # Twelve at once, bound 2: the home replica takes up to 2 x 12 / 3 = 8, the rest spill over.
    assert 4 <= at_home <= 8 and at_home == max(running), running


def replica_metrics(gateway: Gateway) -> dict[tuple[str, tuple], float]:
    """The sluice_replica_* samples of /metrics as {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(gateway.url + "/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("sluice_replica_")}


def test_per_replica_metrics(tmp_path):
    with cluster(tmp_path, [[], ["--fault", "status_503"]], HEALTH_INTERVAL="0.2",
                 ROUTING_STRATEGY="round_robin") as (gateway, sims):
        good, bad = sims[0].url, sims[1].url
        for i in range(6):
            assert generate(gateway, {"prompt": f"q {i}", "max_tokens": 2})[0] == 200
        wait_until(lambda: replica_metrics(gateway).get(("sluice_replica_running_requests",
                                                         (("replica", good),))) is not None, 10, "a scrape")
        figures = replica_metrics(gateway)
    requests_to = {url: figures.get(("sluice_replica_requests_total", (("replica", url),)), 0) for url in (good, bad)}
    assert requests_to[good] == 6, figures
    assert 1 <= requests_to[bad] < 6, "the failing replica was tried, then ejected"
    assert figures[("sluice_replica_failures_total", (("kind", "upstream_overloaded"), ("replica", bad)))] >= 1
    assert figures[("sluice_replica_up", (("replica", good),))] == 1
    assert figures[("sluice_replica_up", (("replica", bad),))] == 0
    assert figures[("sluice_replica_outstanding_requests", (("replica", good),))] == 0
