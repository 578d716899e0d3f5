"""The replica pool: which replicas may serve a request, in which order, and failover among them.

A request that fails before any byte reached the client (connection refused, 503 or 429,
another 5xx, a timeout, a stream that ends before its first event) is retried on the next
replica: at most SLUICE_FAILOVER_TRIES replicas, none twice, and no new try once
SLUICE_FAILOVER_BUDGET seconds have passed. The request's own faults (4xx) are not retried,
and nothing is retried once the client has received part of the answer.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from app.errors import ApiError, NotFound, Unavailable, UpstreamBadResponse
from app.exchange import Exchange
from app.upstream import capabilities, errors
from app.upstream.health_checks import HealthChecker, check_all, discover_models
from app.upstream.http import TRANSPORT_ERRORS, Response
from app.upstream.replicas import Replica
from app.upstream.routing import Strategy, affinity_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailoverPolicy:
    """How far a request may go looking for a replica that serves it."""

    tries: int
    budget: float  # seconds after the first try during which another may start


class Pool:
    """This worker's replicas, its routing strategy, and its health checker."""

    def __init__(self, replicas: Sequence[Replica], strategy: Strategy, failover: FailoverPolicy, *,
                 health_interval: float, affinity_chars: int, default_model: str = "") -> None:
        self.replicas = list(replicas)
        self.strategy = strategy
        self.failover = failover
        self.affinity_chars = affinity_chars
        self.configured_model = default_model
        self.health = HealthChecker(self.replicas, health_interval)

    def replicas_for(self, model: str, path: str | None = None) -> list[Replica]:
        """The replicas that serve `model` (and the route `path`), whatever their state; 404 when there are none.

        400 when replicas serve the model but not the route (an embedding sent to a chat model).
        """
        serving_model = [r for r in self.replicas if r.serves(model)]
        if not serving_model:
            # A replica whose model list is not known yet may be the one: let it answer.
            serving_model = [r for r in self.replicas if r.models is None]
        if not serving_model:
            served = sorted({m for r in self.replicas for m in r.models or ()})
            raise NotFound(f"Model {model!r} is not served here; served: {', '.join(served)}.",
                           param="model", code="model_not_found")
        if path is not None:
            answering = [r for r in serving_model if r.answers(path)]
            if not answering:
                raise capabilities.wrong_route(model, path, serving_model[0].routes)
            return answering
        return serving_model

    def candidates(self, model: str, key: str | None = None, path: str | None = None) -> list[Replica]:
        """The replicas to try for `model` on the route `path`, best first; 404 when none serves it."""
        serving_model = self.replicas_for(model, path)
        available = [r for r in serving_model if r.serving()]
        if available:
            return self.strategy.order(available, key)
        # All of them are out: try them anyway, soonest back first, so that a wrong ejection
        # (a burst of 503s from a replica that has since recovered) does not become an outage.
        return sorted(serving_model, key=lambda r: r.ejected_until)

    def open_with_failover(self, path: str, payload: dict[str, Any], exchange: Exchange, *, stream: bool,
                           session_id: str | None = None) -> Lease:
        """Open the request on the best replica for it, failing over while the client has nothing yet."""
        key = affinity_key(payload, session_id, self.affinity_chars)
        walk = _Failover(self.candidates(payload["model"], key, path), self.failover, path, payload, exchange, stream)
        return Lease(walk)

    def default_model(self) -> str:
        """SLUICE_MODEL, else the first model of the first replica that has listed its models."""
        if self.configured_model:
            return self.configured_model
        for replica in self.replicas:
            if replica.models:
                return replica.models[0]
        for replica in self.replicas:  # none has yet (no background checks here): ask them now
            discover_models(replica)
            if replica.models:
                return replica.models[0]
        raise Unavailable("no replica has said which models it serves; set SLUICE_MODEL or check the "
                          "upstreams (see /readyz)", code="no_model")

    def served_models(self) -> dict[str, str]:
        """Every model some replica serves -> the kind of the first one serving it.

        Replicas that have not listed their models yet are asked now.
        """
        served: dict[str, str] = {}
        for replica in self.replicas:
            if replica.models is None:
                discover_models(replica)
            for model in replica.models or ():
                served.setdefault(model, replica.kind)
        return served

    def check_now(self) -> list[dict[str, Any]]:
        """Check every replica at once and return their states (for /readyz)."""
        check_all(self.replicas)
        return self.snapshot()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every replica's state, load and counters as this worker sees them (for /readyz and metrics)."""
        return [replica.snapshot() for replica in self.replicas]


class _Failover:
    """One request's walk over its candidate replicas."""

    def __init__(self, candidates: list[Replica], policy: FailoverPolicy, path: str, payload: dict[str, Any],
                 exchange: Exchange, stream: bool) -> None:
        self._untried = iter(candidates[:policy.tries])
        self._deadline = time.monotonic() + policy.budget
        self._tried = 0
        self._last_error: ApiError | None = None
        self.path, self.payload, self.exchange, self.stream = path, payload, exchange, stream

    def open_next(self) -> tuple[Replica, Response]:
        """Open the request on the next replica that answers; raise the last error when none is left."""
        for replica in self._untried:
            if self._tried and time.monotonic() >= self._deadline:
                break
            self._tried += 1
            self.exchange.replica = replica.url
            try:
                return replica, self._open(replica)
            except ApiError as exc:
                if not errors.is_replica_fault(exc):
                    raise
        assert self._last_error is not None, "a request always has a first try"
        raise self._last_error

    def failed(self, replica: Replica, exc: ApiError) -> None:
        """The replica failed this request before the client got anything: count it against it."""
        replica.record_failure(exc.code, exc.message)
        self._last_error = exc
        log.warning("request %s failed before its first byte (%s)", self.exchange.request_id, exc.message)

    def _open(self, replica: Replica) -> Response:
        replica.acquire()
        payload = self.payload
        if replica.scheduling_policy == "priority" and self.exchange.vllm_priority is not None:
            payload = {**payload, "priority": self.exchange.vllm_priority}  # the key's class, never the client's
        try:
            response = replica.client.open(self.path, payload, request_id=self.exchange.request_id,
                                           stream=self.stream)
        except ApiError as exc:
            replica.release()
            if errors.is_replica_fault(exc):
                self.failed(replica, exc)
            else:
                replica.record_success()  # it answered: the request was at fault
                raise capabilities.explain_missing_route(exc, self.payload["model"], self.path) from None
            raise
        except BaseException:  # the client left (ClientDisconnected) or the worker is stopping
            replica.release()
            raise
        replica.record_success()
        return response


class Lease:
    """The request's open response from one replica, counted in its outstanding requests until closed.

    For a stream, a replica that fails before the first chunk arrived is replaced by the next
    candidate, transparently to the relay, which reads it like a Response.
    """

    def __init__(self, walk: _Failover) -> None:
        self._walk = walk
        self.replica, self.response = walk.open_next()
        self._held = True

    def read_json(self) -> Any:
        """The whole JSON body (blocking requests)."""
        return self.replica.client.read_json(self.response)

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The response body, chunk by chunk as it arrives (`chunk_size` is ignored)."""
        first, chunks = self._first_chunk()
        yield first
        yield from chunks

    def close(self) -> None:
        """Close the response and tell the replica this request is done (once)."""
        self.response.close()
        if self._held:
            self._held = False
            self.replica.release()

    def _first_chunk(self) -> tuple[bytes, Iterator[bytes]]:
        while True:
            chunks = self.response.iter_content(chunk_size=None)
            try:
                for chunk in chunks:
                    if chunk:
                        return chunk, chunks
                error: ApiError = UpstreamBadResponse(
                    f"upstream {self.replica.url} ended the stream before its first event", code="upstream_truncated")
            except (requests.RequestException, *TRANSPORT_ERRORS) as exc:
                error = errors.from_exception(exc, self.replica.url)
            self.close()
            self._walk.failed(self.replica, error)
            self.replica, self.response = self._walk.open_next()
            self._held = True
