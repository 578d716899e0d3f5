"""Metrics, logs, request ids and /docs under real gunicorn with 2 gevent workers, in front of the simulator."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import Gateway, Simulator, wait_until
from tests.integration.test_gateway import open_raw

TOKEN = "metrics-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "one two three"  # 3 prompt tokens at the simulator
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def simulator(tmp_logs):
    sim = Simulator("--itl", "0.005", log=tmp_logs / "obs-simulator.log")
    yield sim
    sim.stop()


def start_gateway(simulator: Simulator, folder: Path) -> Gateway:
    """A gateway with 2 workers, a metrics token, and its metrics folder and log in `folder`."""
    return Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2", "SLUICE_METRICS_TOKEN": TOKEN,
                    "SLUICE_METRICS_DIR": str(folder / "metrics")}, log=folder / "gateway.log")


@pytest.fixture(scope="module")
def gateway(simulator, tmp_path_factory):
    """Shared by the tests that look at what their own requests changed."""
    gw = start_gateway(simulator, tmp_path_factory.mktemp("observed"))
    yield gw
    gw.stop()


@pytest.fixture
def fresh_gateway(simulator, tmp_path):
    """A gateway of the test's own: its counters start from zero."""
    gw = start_gateway(simulator, tmp_path)
    yield gw
    gw.stop()


def scrape(gw: Gateway) -> list:
    """Every sample /metrics shows, parsed by prometheus-client's own parser."""
    reply = requests.get(gw.url + "/metrics", headers=AUTH, timeout=10)
    assert reply.status_code == 200, reply.text
    return [s for family in text_string_to_metric_families(reply.text) for s in family.samples]


def total(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def log_lines(gw: Gateway) -> list[dict]:
    """The gateway's JSON log lines (gunicorn's own lines are plain text)."""
    lines = gw.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def send(gw: Gateway, kind: str, request_id: str) -> int:
    """One request of a kind; returns its status. No response object outlives the call."""
    headers = {"X-Request-ID": request_id}
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS}
    if kind == "blocking":
        return requests.post(gw.url + "/v1/generate", json=body, headers=headers, timeout=30).status_code
    if kind == "stream":
        with requests.post(gw.url + "/v1/generate/stream", json=body, headers=headers, timeout=30) as reply:
            assert reply.content.endswith(b"data: [DONE]\n\n")
            return reply.status_code
    if kind == "invalid":
        return requests.post(gw.url + "/v1/generate", json={"prompt": ""}, headers=headers, timeout=30).status_code
    return requests.get(gw.url + "/v1/nowhere", headers=headers, timeout=30).status_code


def live_gauge_pids(folder: Path) -> set[int]:
    """The workers that have live gauge files (gauge_livesum_<pid>.db) in the metrics folder."""
    return {int(name[:-3].rsplit("_", 1)[1]) for name in os.listdir(folder) if name.startswith("gauge_livesum_")}


BATCH = {"blocking": 3, "stream": 3, "invalid": 2, "unknown": 1}
STATUS = {"blocking": 200, "stream": 200, "invalid": 422, "unknown": 404}


def test_counters_add_up_across_both_workers_and_survive_a_worker_death(fresh_gateway, tmp_path):
    gateway = fresh_gateway
    sent = dict.fromkeys(BATCH, 0)
    pids: set[int] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for batch in range(10):  # until both workers have served a generation (usually the first batch)
            kinds = [kind for kind, n in BATCH.items() for _ in range(n)]
            statuses = list(pool.map(lambda ik, batch=batch: send(gateway, ik[1], f"obs-{batch}-{ik[0]}"),
                                     enumerate(kinds)))
            assert statuses == [STATUS[kind] for kind in kinds]
            for kind in kinds:
                sent[kind] += 1
            generations = sent["blocking"] + sent["stream"]
            wait_until(lambda n=generations: len([line for line in log_lines(gateway)
                                                  if line.get("event") == "generation"]) == n,
                       5, "a log line per generation")
            pids = {line["pid"] for line in log_lines(gateway) if line.get("event") == "generation"}
            if len(pids) == 2:
                break
    assert len(pids) == 2, "both workers served"

    streams, generations = sent["stream"], sent["blocking"] + sent["stream"]
    expected = {
        ("sluice_requests_total", "/v1/generate", "200"): sent["blocking"],
        ("sluice_requests_total", "/v1/generate/stream", "200"): streams,
        ("sluice_requests_total", "/v1/generate", "422"): sent["invalid"],
        ("sluice_requests_total", "unmatched", "404"): sent["unknown"],
    }

    def counts(samples: list) -> dict:
        got = {key: total(samples, key[0], route=key[1], status=key[2]) for key in expected}
        got["generations completed"] = total(samples, "sluice_generations_total", outcome="completed")
        got["completion tokens"] = total(samples, "sluice_completion_tokens_total", model="sim-model")
        got["prompt tokens"] = total(samples, "sluice_prompt_tokens_total", model="sim-model")
        got["ttft count"] = total(samples, "sluice_time_to_first_token_seconds_count")
        # Each stream: 4 token events and the usage event, so 4 gaps.
        got["token gaps"] = total(samples, "sluice_time_between_tokens_seconds_count")
        got["overhead count"] = total(samples, "sluice_gateway_overhead_seconds_count")
        got["durations"] = (total(samples, "sluice_request_duration_seconds_count", route="/v1/generate")
                            + total(samples, "sluice_request_duration_seconds_count", route="/v1/generate/stream"))
        got["in flight"] = total(samples, "sluice_generations_in_flight")
        return got

    expected_counts = {**expected, "generations completed": generations, "completion tokens": generations * MAX_TOKENS,
                       "prompt tokens": generations * 3, "ttft count": streams, "token gaps": streams * MAX_TOKENS,
                       "overhead count": generations,
                       "durations": sent["blocking"] + sent["invalid"] + streams, "in flight": 0}
    # A request's duration is recorded as its response closes, a moment after the client has it all.
    wait_until(lambda: counts(scrape(gateway)) == expected_counts, 5, "the metrics of every request")
    assert counts(scrape(gateway)) == expected_counts

    # A worker dies: its counters stay in the totals; its live gauges are dropped (child_exit hook).
    victim = pids.pop()
    os.kill(victim, signal.SIGKILL)
    # The replacement worker has imported the app when its in-flight gauge file appears.
    wait_until(lambda: len(live_gauge_pids(tmp_path / "metrics") - {victim}) == 2, 10, "a replacement worker")
    assert counts(scrape(gateway)) == expected_counts
    files = os.listdir(tmp_path / "metrics")
    assert any(name.endswith(f"_{victim}.db") for name in files), "the dead worker's counters are kept"
    assert not [name for name in files if name.startswith("gauge_live") and name.endswith(f"_{victim}.db")]


def test_in_flight_gauge_and_stream_cancellation(gateway):
    cancelled = {"stream": "true", "outcome": "client_cancelled"}
    assert total(scrape(gateway), "sluice_generations_in_flight") == 0
    cancelled_before = total(scrape(gateway), "sluice_generations_total", **cancelled)
    sock = open_raw(gateway.url, "/v1/generate/stream", {"prompt": "long", "max_tokens": 2000})
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(4096)
    assert total(scrape(gateway), "sluice_generations_in_flight") == 1
    sock.close()
    wait_until(lambda: total(scrape(gateway), "sluice_generations_in_flight") == 0, 5, "the stream to end")
    assert total(scrape(gateway), "sluice_generations_total", **cancelled) == cancelled_before + 1
    [line] = [line for line in log_lines(gateway) if line.get("outcome") == "client_cancelled"]
    assert line["stream"] is True and line["completion_tokens"] >= 3


def test_request_id_in_response_upstream_and_log_line_and_no_secret_logged(gateway):
    reply = requests.post(gateway.url + "/v1/generate", json={"prompt": PROMPT, "max_tokens": 2}, timeout=30,
                          headers={"X-Request-ID": "trace-me-42", "Authorization": "Bearer sk-never-log-me"})
    assert reply.headers["X-Request-ID"] == "trace-me-42"
    assert reply.json()["id"] == "cmpl-trace-me-42", "the simulator names its completion after the request id it got"
    assert float(reply.headers["X-Sluice-Overhead-Ms"]) > 0
    wait_until(lambda: any(line.get("request_id") == "trace-me-42" for line in log_lines(gateway)), 5, "the log line")
    wait_until(lambda: len([line for line in log_lines(gateway) if line.get("request_id") == "trace-me-42"]) == 2,
               5, "the request's line, after its generation's")
    generation, request = [line for line in log_lines(gateway) if line.get("request_id") == "trace-me-42"]
    assert (generation["event"], generation["outcome"], generation["completion_tokens"]) == ("generation",
                                                                                           "completed", 2)
    assert (request["event"], request["status"], request["route"]) == ("request", 200, "/v1/generate")
    assert "sk-never-log-me" not in gateway.log_path.read_text()


def test_metrics_need_their_token_and_refusals_are_counted(gateway):
    before = total(scrape(gateway), "sluice_rejections_total", reason="auth", route="/metrics")
    refused = requests.get(gateway.url + "/metrics", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_metrics_token"
    assert total(scrape(gateway), "sluice_rejections_total", reason="auth", route="/metrics") == before + 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_page_renders_every_operation_in_chromium(gateway):
    assert CHROMIUM, "headless Chromium is needed: `make system-deps` installs Debian's chromium"
    spec = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    with tempfile.TemporaryDirectory() as profile:
        # Every host but the gateway unreachable: the page must load Swagger UI from the gateway.
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=20000", "--dump-dom", gateway.url + "/docs"],
            capture_output=True, text=True, timeout=120)
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', result.stdout))
    assert rendered == set(spec["paths"]), result.stderr[-2000:]
    assert "/docs/assets/swagger-ui-bundle.js" in gateway.log_path.read_text()

