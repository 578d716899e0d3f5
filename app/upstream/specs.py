"""Which replicas the gateway sends work to: SLUICE_UPSTREAMS_FILE, or the URLs in SLUICE_UPSTREAM_URL.

The file is JSON, because a list of replicas does not fit one environment variable well:

    {"upstreams": [
        {"url": "http://gpu1:8000", "kind": "vllm", "weight": 2, "models": ["llama-3.1-8b"]},
        {"url": "http://gpu2:8000"}
    ]}

`kind` defaults to vllm, `weight` to 1; without `models` the replica's /v1/models is asked.
`capacity` (generations it runs at once through the gateway) defaults to
SLUICE_REPLICA_CAPACITY; `scheduling_policy` to SLUICE_UPSTREAM_SCHEDULING_POLICY (a vLLM
started with `--scheduling-policy priority` says "priority": it is then sent each key's class).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.config import ConfigError

KINDS = ("vllm", "openai", "ollama")  # the keys of app.upstream.CLIENT_KINDS
_FIELDS = frozenset(("url", "kind", "weight", "models", "api_key", "capacity", "scheduling_policy"))
SCHEDULING_POLICIES = ("fcfs", "priority")  # vLLM's --scheduling-policy
_EXAMPLE = '{"upstreams": [{"url": "http://gpu1:8000", "kind": "vllm", "weight": 1, "models": ["my-model"]}]}'


@dataclass(frozen=True)
class ReplicaSpec:
    """One configured replica: where it is, what kind of server, its relative capacity, its models."""

    url: str
    kind: str = "vllm"
    weight: float = 1.0
    models: tuple[str, ...] | None = None  # None: ask the replica
    api_key: str | None = None  # None: SLUICE_UPSTREAM_API_KEY
    capacity: int | None = None  # None: SLUICE_REPLICA_CAPACITY (0: no bound)
    scheduling_policy: str = "fcfs"


def load_specs(settings: Mapping[str, Any]) -> list[ReplicaSpec]:
    """The configured replicas (none when no upstream is configured); ConfigError names what is wrong."""
    path, urls = settings["UPSTREAMS_FILE"], settings["UPSTREAM_URL"]
    if path and urls:
        raise ConfigError("set SLUICE_UPSTREAMS_FILE or SLUICE_UPSTREAM_URL, not both")
    if path:
        specs = _from_file(path)
    else:
        kind = settings["UPSTREAM_KIND"]
        policy = settings["UPSTREAM_SCHEDULING_POLICY"] if kind == "vllm" else "fcfs"
        specs = [ReplicaSpec(url=_check_url(url.strip(), "SLUICE_UPSTREAM_URL"), kind=kind, scheduling_policy=policy)
                 for url in urls.split(",") if url.strip()]
    seen: set[str] = set()
    for spec in specs:
        if spec.url in seen:
            raise ConfigError(f"upstream {spec.url} is listed twice")
        seen.add(spec.url)
    return specs


def _from_file(path: str) -> list[ReplicaSpec]:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise ConfigError(f"SLUICE_UPSTREAMS_FILE={path!r} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"SLUICE_UPSTREAMS_FILE={path!r} is not valid JSON: {exc}") from None
    entries = document.get("upstreams") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"SLUICE_UPSTREAMS_FILE={path!r} must hold a non-empty list, e.g. {_EXAMPLE}")
    return [_spec(entry, f"{path}: upstreams[{i}]") for i, entry in enumerate(entries)]


def _spec(entry: Any, where: str) -> ReplicaSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object with at least a url")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    if not isinstance(entry.get("url"), str):
        raise ConfigError(f"{where}: url is required (a string)")
    kind = entry.get("kind", "vllm")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise ConfigError(f"{where}: weight must be a number above 0, not {weight!r}")
    models = entry.get("models")
    if models is not None and (not isinstance(models, list) or not models
                               or not all(isinstance(m, str) and m for m in models)):
        raise ConfigError(f"{where}: models must be a non-empty list of model names (or left out to ask the replica)")
    api_key = entry.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{where}: api_key must be a string")
    capacity = entry.get("capacity")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0):
        raise ConfigError(f"{where}: capacity must be a whole number >= 0 (0: no bound), not {capacity!r}")
    policy = entry.get("scheduling_policy", "fcfs")
    if policy not in SCHEDULING_POLICIES or (policy == "priority" and kind != "vllm"):
        raise ConfigError(f"{where}: scheduling_policy must be fcfs, or priority for a vllm replica, not {policy!r}")
    return ReplicaSpec(url=_check_url(entry["url"], where), kind=kind, weight=float(weight),
                       models=tuple(models) if models else None, api_key=api_key, capacity=capacity,
                       scheduling_policy=policy)


def _check_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")
