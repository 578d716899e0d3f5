"""A vLLM replica's own load figures, read from the Prometheus text of its /metrics."""
from __future__ import annotations

import math
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"  # the same gauge in older vLLM releases


@dataclass(frozen=True)
class Load:
    """Requests the replica is generating and queueing, and how full its KV cache is (0 to 1)."""

    running: float
    waiting: float
    kv_cache_usage: float


def parse_vllm_metrics(text: str) -> Load | None:
    """The load in a vLLM /metrics page; None when it has none of the gauges (not a vLLM).

    Requests add up over the series (one per model and engine); the KV cache is the fullest engine's.
    """
    sums = {RUNNING: 0.0, WAITING: 0.0}
    kv: list[float] = []
    found = False
    for line in text.splitlines():
        sample = _sample(line)
        if sample is None:
            continue
        name, value = sample
        if name in sums:
            sums[name] += value
            found = True
        elif name in (KV_CACHE, KV_CACHE_OLD):
            kv.append(value)
            found = True
    if not found:
        return None
    return Load(running=sums[RUNNING], waiting=sums[WAITING], kv_cache_usage=max(kv, default=0.0))


def _sample(line: str) -> tuple[str, float] | None:
    """(metric name, value) of one exposition line; None for comments, blanks and garbage."""
    if not line.startswith("vllm:"):
        return None
    if "{" in line:
        # Label values may hold spaces: the value follows the closing brace.
        name, rest = line[:line.index("{")], line[line.rindex("}") + 1:]
    else:
        name, _, rest = line.partition(" ")
    try:
        value = float(rest.split()[0])
    except (IndexError, ValueError):
        return None
    return (name, value) if math.isfinite(value) and value >= 0 else None
