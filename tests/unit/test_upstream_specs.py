"""Which replicas are configured: the URL list, the upstreams file, and every way to get them wrong."""
from __future__ import annotations

import json

import pytest

from app import config, create_app
from app.upstream.specs import ReplicaSpec, load_specs


def settings(**overrides):
    return config.load(overrides, environ={})


def write(tmp_path, document) -> str:
    path = tmp_path / "upstreams.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def test_comma_separated_urls_are_replicas_of_weight_one():
    specs = load_specs(settings(UPSTREAM_URL="http://a:8000/, http://b:8000"))
    assert specs == [ReplicaSpec("http://a:8000"), ReplicaSpec("http://b:8000")]


def test_no_upstream_is_no_replica():
    assert load_specs(settings()) == []


def test_file_with_kinds_weights_models_and_keys(tmp_path):
    path = write(tmp_path, {"upstreams": [
        {"url": "http://gpu1:8000", "kind": "vllm", "weight": 2, "models": ["llama"]},
        {"url": "https://api.example.com", "kind": "openai", "api_key": "sk-1"},
    ]})
    assert load_specs(settings(UPSTREAMS_FILE=path)) == [
        ReplicaSpec("http://gpu1:8000", "vllm", 2.0, ("llama",)),
        ReplicaSpec("https://api.example.com", "openai", 1.0, None, "sk-1"),
    ]


BAD_FILES = [
    ("not json", "{", "not valid JSON"),
    ("a bare list", [{"url": "http://a:1"}], "must hold a non-empty list"),
    ("empty list", {"upstreams": []}, "must hold a non-empty list"),
    ("entry not an object", {"upstreams": ["http://a:1"]}, r"upstreams\[0\] must be an object"),
    ("no url", {"upstreams": [{"kind": "vllm"}]}, "url is required"),
    ("not http", {"upstreams": [{"url": "gpu1:8000"}]}, "not an http"),
    ("unknown kind", {"upstreams": [{"url": "http://a:1", "kind": "tgi"}]}, "kind must be one of"),
    ("zero weight", {"upstreams": [{"url": "http://a:1", "weight": 0}]}, "weight must be a number above 0"),
    ("models not a list", {"upstreams": [{"url": "http://a:1", "models": "m"}]}, "models must be a non-empty list"),
    ("misspelt field", {"upstreams": [{"url": "http://a:1", "model": ["m"]}]}, "unknown field"),
    ("twice the same", {"upstreams": [{"url": "http://a:1"}, {"url": "http://a:1/"}]}, "listed twice"),
    ("negative capacity", {"upstreams": [{"url": "http://a:1", "capacity": -1}]}, "capacity must be a whole number"),
    ("capacity not whole", {"upstreams": [{"url": "http://a:1", "capacity": 2.5}]}, "capacity must be a whole number"),
    ("unknown scheduling", {"upstreams": [{"url": "http://a:1", "scheduling_policy": "lifo"}]}, "scheduling_policy"),
    ("priority on openai", {"upstreams": [{"url": "http://a:1", "kind": "openai", "scheduling_policy": "priority"}]},
     "priority for a vllm replica"),
]


@pytest.mark.parametrize("name, document, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_named_with_what_is_wrong(tmp_path, name, document, message):
    with pytest.raises(config.ConfigError, match=message):
        load_specs(settings(UPSTREAMS_FILE=write(tmp_path, document)))


def test_missing_file_and_both_settings_are_refused(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot be read"):
        load_specs(settings(UPSTREAMS_FILE=str(tmp_path / "nope.json")))
    with pytest.raises(config.ConfigError, match="not both"):
        load_specs(settings(UPSTREAMS_FILE=write(tmp_path, {"upstreams": [{"url": "http://a:1"}]}),
                            UPSTREAM_URL="http://b:1"))


def test_each_replica_gets_the_client_of_its_kind(tmp_path):
    path = write(tmp_path, {"upstreams": [{"url": "http://a:11434", "kind": "ollama"}, {"url": "http://b:8000"},
                                          {"url": "http://c:8000", "kind": "openai"}]})
    pool = create_app({"UPSTREAMS_FILE": path}).extensions["sluice.upstream"]
    assert [type(r.client).__name__ for r in pool.replicas] == ["OllamaClient", "UpstreamClient",
                                                                "OpenAICompatibleClient"]


def test_upstream_kind_applies_to_the_urls_of_upstream_url():
    pool = create_app({"UPSTREAM_URL": "http://a:11434,http://b:11434", "UPSTREAM_KIND": "ollama"}
                      ).extensions["sluice.upstream"]
    assert [(r.url, r.kind, type(r.client).__name__) for r in pool.replicas] == [
        ("http://a:11434", "ollama", "OllamaClient"), ("http://b:11434", "ollama", "OllamaClient")]


def test_capacity_and_scheduling_policy_per_replica(tmp_path):
    path = write(tmp_path, {"upstreams": [
        {"url": "http://gpu1:8000", "capacity": 64, "scheduling_policy": "priority"},
        {"url": "http://gpu2:8000"},
    ]})
    first, second = load_specs(settings(UPSTREAMS_FILE=path))
    assert (first.capacity, first.scheduling_policy) == (64, "priority")
    assert (second.capacity, second.scheduling_policy) == (None, "fcfs")  # None: SLUICE_REPLICA_CAPACITY


def test_scheduling_policy_of_upstream_url_applies_to_vllm_only():
    vllm = load_specs(settings(UPSTREAM_URL="http://a:1", UPSTREAM_SCHEDULING_POLICY="priority"))
    ollama = load_specs(settings(UPSTREAM_URL="http://a:1", UPSTREAM_KIND="ollama",
                                 UPSTREAM_SCHEDULING_POLICY="priority"))
    assert [s.scheduling_policy for s in vllm + ollama] == ["priority", "fcfs"]
