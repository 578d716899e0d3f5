"""Routing strategies: in which order a request tries the replicas that serve its model.

Each strategy ranks the serving replicas; the request goes to the first and fails over to
the next ones. Weights scale every strategy (a replica of weight 2 is chosen as if it had
twice the capacity); ties rotate, so idle replicas share the work evenly.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from app.upstream.replicas import Replica

SESSION_HEADER = "X-Session-ID"


class Strategy(Protocol):
    """Ranks replicas for one request; `key` is its affinity key (prefix or session), if any."""

    def order(self, replicas: Sequence[Replica], key: str | None) -> list[Replica]: ...


class _ByScore:
    """Lowest score first; equal scores take turns."""

    def __init__(self, score: Callable[[Replica], float]) -> None:
        self._score = score
        self._turn = 0

    def order(self, replicas: Sequence[Replica], key: str | None) -> list[Replica]:
        self._turn += 1
        count = len(replicas)
        ranked = sorted(enumerate(replicas), key=lambda ir: (self._score(ir[1]), (ir[0] - self._turn) % count))
        return [replica for _, replica in ranked]


def least_outstanding() -> Strategy:
    """Fewest requests of this worker in flight, for its weight."""
    return _ByScore(lambda r: r.outstanding / r.effective_weight())


def load_aware() -> Strategy:
    """Least loaded: this worker's requests plus what vLLM's /metrics says it runs, queues and caches."""
    return _ByScore(Replica.load_score)


class RoundRobin:
    """Smooth weighted round-robin (nginx's): weight 2 gets two turns in three, spread out, not bunched."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def order(self, replicas: Sequence[Replica], key: str | None) -> list[Replica]:
        total = 0.0
        for replica in replicas:
            weight = replica.effective_weight()
            self._current[replica.url] = self._current.get(replica.url, 0.0) + weight
            total += weight
        ranked = sorted(replicas, key=lambda r: -self._current[r.url])
        self._current[ranked[0].url] -= total
        return ranked


class PrefixAffinity:
    """Requests with the same key go to the same replica (its prefix cache hits), within a load bound.

    The replica is chosen by rendezvous hashing, so every worker and every gateway host agrees
    on it and adding a replica moves only its share of keys. A replica keeps taking its keys
    while its load is below `load_factor` times the average (consistent hashing with bounded
    loads); above that, the key spills to the next replica in its hash order.
    """

    def __init__(self, load_factor: float) -> None:
        self.load_factor = load_factor
        self._fallback = load_aware()

    def order(self, replicas: Sequence[Replica], key: str | None) -> list[Replica]:
        if key is None:
            return self._fallback.order(replicas, None)
        ranked = sorted(replicas, key=lambda r: _rendezvous(key, r), reverse=True)
        total_load = sum(r.queue_estimate() for r in replicas)
        total_weight = sum(r.effective_weight() for r in replicas)
        # The average load per unit of weight, counting the request being placed.
        bound = self.load_factor * (total_load + 1) / total_weight
        return sorted(ranked, key=lambda r: r.queue_estimate() / r.effective_weight() >= bound)  # stable


def _rendezvous(key: str, replica: Replica) -> float:
    """Weighted rendezvous score of a replica for a key (the same in every process)."""
    digest = hashlib.blake2b(f"{key}\x00{replica.url}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2 ** 64 + 2)  # in (0, 1)
    return -replica.weight / math.log(unit)


def affinity_key(payload: dict[str, Any], session_id: str | None, prefix_chars: int) -> str | None:
    """What keeps a request on one replica: its session, else the start of its prompt or messages."""
    if session_id:
        return "session:" + session_id
    text = payload.get("messages", payload.get("prompt"))
    if text is None:
        return None
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False)
    return "prefix:" + text[:prefix_chars]


def make_strategy(name: str, *, load_factor: float) -> Strategy:
    """The strategy named by SLUICE_ROUTING_STRATEGY."""
    builders: dict[str, Callable[[], Strategy]] = {
        "load_aware": load_aware,
        "least_outstanding": least_outstanding,
        "round_robin": RoundRobin,
        "prefix_affinity": lambda: PrefixAffinity(load_factor),
    }
    return builders[name]()
