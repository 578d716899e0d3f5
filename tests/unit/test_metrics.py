"""Metric recording: requests, generations, rejections, overhead, and /metrics itself.

These run in one process without gunicorn (prometheus-client's plain mode), so each test
reads the change its own requests made to the process-wide values.
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
import responses
from flask import g
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.parser import text_string_to_metric_families

from app.observe import metrics, metrics_dir
from app.observe.instrument import OVERHEAD_HEADER
from tests.conftest import UPSTREAM
from tests.unit.test_stream_relay import UPSTREAM_STREAM

COMPLETIONS = f"{UPSTREAM}/v1/completions"
BLOCKING_REPLY = {"id": "cmpl-1", "object": "text_completion", "model": "sim-model",
                  "choices": [{"index": 0, "text": " Paris", "finish_reason": "length"}],
                  "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}


def value(name: str, **labels: str) -> float:
    """The current value of one sample (0 when it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Sample values before a block, to assert on what the block added."""

    def __init__(self, *samples: tuple) -> None:
        self.samples = samples
        self.before = [value(name, **labels) for name, labels in samples]

    def added(self) -> list[float]:
        return [value(name, **labels) - b for (name, labels), b in zip(self.samples, self.before, strict=True)]


def requests_sample(route: str, status: str, method: str = "POST", key_name: str = "anonymous") -> tuple:
    return "sluice_requests_total", dict(route=route, method=method, status=status, key_name=key_name)


def test_observe_all_matches_observe_one_by_one():
    buckets = (0.001, 0.01, 0.1, 1)
    one_by_one = Histogram("a_seconds", "x", buckets=buckets, registry=CollectorRegistry())
    at_once = Histogram("b_seconds", "x", buckets=buckets, registry=CollectorRegistry())
    values = [random.uniform(0, 2) for _ in range(500)] + list(buckets)  # bounds land in their own bucket
    for v in values:
        one_by_one.observe(v)
    metrics.observe_all(at_once, values)
    collect = lambda h: [(s.name.split("_", 1)[1], s.labels, round(s.value, 9))  # noqa: E731
                         for s in h.collect()[0].samples if not s.name.endswith("_created")]
    assert collect(at_once) == collect(one_by_one)


def test_every_request_is_counted_by_route_method_status(client):
    delta = Delta(requests_sample("/healthz", "200", "GET"), requests_sample("unmatched", "404", "GET"),
                  ("sluice_request_duration_seconds_count", {"route": "/healthz"}))
    client.get("/healthz").close()  # the duration is taken when the response is closed (its last byte)
    client.get("/no/such/path")
    assert delta.added() == [1, 1, 1]


def test_key_name_label_comes_from_access_control(app):
    @app.before_request
    def authenticate():  # what the access-control module does for a valid key
        g.key_name = "team-a"

    delta = Delta(requests_sample("/healthz", "200", "GET", key_name="team-a"))
    app.test_client().get("/healthz")
    assert delta.added() == [1]


@responses.activate
def test_blocking_generation_records_tokens_outcome_and_overhead(client):
    responses.post(COMPLETIONS, json=BLOCKING_REPLY)
    delta = Delta(
        ("sluice_generations_total", dict(route="/v1/generate", model="sim-model", stream="false",
                                          outcome="completed", key_name="anonymous")),
        ("sluice_prompt_tokens_total", dict(model="sim-model", key_name="anonymous")),
        ("sluice_completion_tokens_total", dict(model="sim-model", key_name="anonymous")),
        ("sluice_gateway_overhead_seconds_count", dict(route="/v1/generate", stream="false")),
    )
    reply = client.post("/v1/generate", json={"prompt": "The capital of France is"})
    assert reply.status_code == 200
    assert delta.added() == [1, 4, 1, 1]
    assert float(reply.headers[OVERHEAD_HEADER]) >= 0
    assert value("sluice_generations_in_flight") == 0


@responses.activate
def test_stream_records_time_to_first_token_and_between_tokens(client):
    responses.post(COMPLETIONS, body=UPSTREAM_STREAM, content_type="text/event-stream")
    labels = dict(route="/v1/generate/stream", model="sim-model")
    delta = Delta(("sluice_time_to_first_token_seconds_count", labels),
                  ("sluice_time_between_tokens_seconds_count", labels),
                  ("sluice_completion_tokens_total", dict(model="sim-model", key_name="anonymous")))
    reply = client.post("/v1/generate/stream", json={"prompt": "the sky", "max_tokens": 3})
    assert reply.data.endswith(b"data: [DONE]\n\n")  # relayed to the end
    # 4 upstream events (3 tokens, then usage): one first token, three gaps.
    assert delta.added() == [1, 3, 3]
    assert OVERHEAD_HEADER in reply.headers
    assert value("sluice_generations_in_flight") == 0


@responses.activate
def test_upstream_errors_by_kind_and_replica(client):
    responses.post(COMPLETIONS, status=500, json={"error": {"message": "boom"}})
    delta = Delta(("sluice_upstream_errors_total", dict(kind="upstream_500", replica=UPSTREAM)))
    assert client.post("/v1/generate", json={"prompt": "x"}).status_code == 502
    assert delta.added() == [1]


@responses.activate
def test_overloaded_upstream_is_an_overload_rejection(client):
    responses.post(COMPLETIONS, status=429, json={"error": {"message": "busy"}})
    delta = Delta(("sluice_rejections_total", dict(reason="overload", route="/v1/generate")),
                  ("sluice_upstream_errors_total", dict(kind="upstream_overloaded", replica=UPSTREAM)))
    assert client.post("/v1/generate", json={"prompt": "x"}).status_code == 503
    assert delta.added() == [1, 1]


@responses.activate
def test_unknown_model_does_not_become_a_label_value(client):
    responses.post(COMPLETIONS, status=404, json={"error": {"message": "The model `zz` does not exist."}})
    delta = Delta(("sluice_generations_total", dict(route="/v1/generate", model="invalid", stream="false",
                                                    outcome="upstream_error", key_name="anonymous")))
    assert client.post("/v1/generate", json={"prompt": "x", "model": "zz"}).status_code == 404
    assert delta.added() == [1]


def test_refusing_module_names_the_reason_and_the_status_is_not_counted_again(app):
    from app.errors import RateLimited

    @app.route("/limited")
    def limited():
        metrics.count_rejection("tokens")
        raise RateLimited("token budget spent")

    @app.route("/unauthorized")
    def unauthorized():
        from app.errors import Unauthorized
        raise Unauthorized("no key")

    sample = lambda reason, route: ("sluice_rejections_total", dict(reason=reason, route=route))  # noqa: E731
    delta = Delta(sample("tokens", "/limited"), sample("rate", "/limited"), sample("auth", "/unauthorized"))
    client = app.test_client()
    assert client.get("/limited").status_code == 429
    assert client.get("/unauthorized").status_code == 401
    assert delta.added() == [1, 0, 1]


def test_unknown_rejection_reason_is_a_bug():
    with pytest.raises(ValueError, match="unknown rejection reason"):
        metrics.count_rejection("bored")


def test_waiting_gauge_counts_the_block():
    before = value("sluice_requests_waiting")
    with metrics.waiting():
        assert value("sluice_requests_waiting") == before + 1
    assert value("sluice_requests_waiting") == before


@responses.activate
def test_readyz_records_replica_state(client):
    responses.get(f"{UPSTREAM}/health", status=200)
    client.get("/readyz")
    assert value("sluice_replica_up", replica=UPSTREAM) == 1
    responses.replace(responses.GET, f"{UPSTREAM}/health", status=500)
    assert client.get("/readyz").status_code == 503
    assert value("sluice_replica_up", replica=UPSTREAM) == 0


def test_metrics_endpoint_is_prometheus_text(client):
    client.get("/healthz")
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.mimetype == "text/plain"
    names = {family.name for family in text_string_to_metric_families(reply.data.decode())}
    assert {"sluice_requests", "sluice_gateway_overhead_seconds", "sluice_generations_in_flight"} <= names


def test_metrics_token_is_required_when_set(make_app):
    client = make_app(METRICS_TOKEN="s3cret").test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json["error"]["code"] == "invalid_metrics_token"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_metrics_folder_is_emptied_at_start(tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("not ours")
    metrics_dir.prepare(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    metrics_dir.prepare(str(tmp_path / "new"))
    assert (tmp_path / "new").is_dir()


def test_forget_process_removes_what_prometheus_client_would(tmp_path):
    names = ["gauge_livesum_7.db", "gauge_liveall_7.db", "gauge_livemostrecent_7.db", "gauge_all_7.db",
             "gauge_livesum_70.db", "counter_7.db", "histogram_7.db"]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"")
    metrics_dir.forget_process(str(ours), 7)
    prometheus_multiprocess.mark_process_dead(7, str(theirs))
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    assert "counter_7.db" in os.listdir(ours) and "gauge_livesum_7.db" not in os.listdir(ours)


def test_default_folder_is_per_address_and_process():
    a = metrics_dir.default_folder("127.0.0.1:8080", 10)
    assert a != metrics_dir.default_folder("127.0.0.1:8081", 10) != metrics_dir.default_folder("127.0.0.1:8080", 11)
    assert ":" not in os.path.basename(a)


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_dashboard_queries_only_metrics_that_exist(client):
    exposed = client.get("/metrics").data.decode()
    families = {family.name: family.type for family in text_string_to_metric_families(exposed)}
    samples = {f"{name}{suffix}" for name, kind in families.items()
               for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                              "gauge": ("",)}[kind]}
    queries = dashboard_queries()
    assert len(queries) >= 10
    queried = {name for expr in queries for name in re.findall(r"\bsluice_\w+", expr)}
    assert queried <= samples, f"not exposed: {sorted(queried - samples)}"



def test_every_metric_is_in_the_operators_docs():
    from prometheus_client.metrics import MetricWrapperBase
    docs = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    catalogue = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(catalogue) >= 13
    for metric in catalogue:
        name = metric._name + ("_total" if metric._type == "counter" else "")
        row = f"| `{name}` | {metric._type} | {', '.join(metric._labelnames)}".rstrip() + " |"
        assert row in docs, f"docs/observability.md lacks the row of {name}: {row}"
