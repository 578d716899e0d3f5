"""One upstream replica as this worker sees it: what it serves, whether it may take work, how busy it is.

Each gunicorn worker keeps its own Replica objects (no shared state, no locks: a gevent
worker runs one greenlet at a time). The states:

    healthy ──(N consecutive failures, or a failed health check)──> ejected
    ejected ──(cooldown over, then a passing health check)──> recovering
    recovering ──(RECOVERY_SECONDS without failure)──> healthy
    recovering ──(any failure)──> ejected

A recovering replica takes a share of its weight that grows from a tenth to all of it, so a
restarted vLLM is not handed a full load while it warms up.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from blinker import Namespace

from app.upstream.capabilities import FIXED_ROUTES
from app.upstream.http import Response
from app.upstream.load import Load
from app.upstream.specs import ReplicaSpec

log = logging.getLogger(__name__)

HEALTHY, EJECTED, RECOVERING = "healthy", "ejected", "recovering"
SERVING = (HEALTHY, RECOVERING)

# For metrics (app/observe/instrument.py), so that routing knows nothing of them. Sender: the Replica.
_signals = Namespace()
observed = _signals.signal("sluice.replica-observed")  # its state or load figures may have changed
request_started = _signals.signal("sluice.replica-request-started")
request_ended = _signals.signal("sluice.replica-request-ended")
failed = _signals.signal("sluice.replica-failed")  # with code=: a failure charged to it
RECOVERY_START_SHARE = 0.1  # of its weight, for a replica that has just returned
# Load-aware score: a queued request weighs more than a running one (the replica is at its
# batch limit, so a new request waits too), and a full KV cache as much as this many more
# requests (vLLM preempts running requests when it runs out).
WAITING_WEIGHT = 1.0
KV_CACHE_WEIGHT = 4.0


class Client(Protocol):
    """What the pool needs from the client of any kind of replica (app/upstream/client.py for vLLM)."""

    base_url: str

    def open(self, path: str, payload: dict[str, Any], *, request_id: str | None,
             stream: bool) -> Response: ...

    def read_json(self, response: Response) -> Any: ...

    def get_json(self, path: str) -> Any: ...

    def get_text(self, path: str) -> str: ...

    def check_health(self) -> None: ...


@dataclass(frozen=True)
class HealthPolicy:
    """When replicas are taken out and how they come back."""

    eject_after: int  # consecutive failed requests
    cooldown: float  # seconds out before a passing check may bring it back
    recovery: float  # seconds to ramp from RECOVERY_START_SHARE to its full weight


class Replica:
    """A replica's configuration, client, health state, and the load this worker knows of."""

    def __init__(self, spec: ReplicaSpec, client: Client, policy: HealthPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.kind, self.weight = spec.url, spec.kind, spec.weight
        self.scheduling_policy = spec.scheduling_policy
        self.client = client
        self.policy = policy
        self.clock = clock
        self.models: tuple[str, ...] | None = spec.models
        self.models_configured = spec.models is not None
        # The POST routes it serves (None: not known yet, or not knowable: every route is tried).
        self.routes: frozenset[str] | None = FIXED_ROUTES.get(spec.kind)
        self.routes_retry_at = 0.0  # monotonic time before which unreadable routes are not asked again
        self.state = HEALTHY
        self.state_since = clock()
        self.ejected_until = 0.0
        self.reason = ""  # why it is (or, while recovering, was) ejected
        self.consecutive_failures = 0
        self.ejections = 0
        self.outstanding = 0  # requests of this worker open on it
        self.requests = 0  # requests this worker sent it
        self.failures: Counter[str] = Counter()  # failed requests by error code
        self.load: Load | None = None
        self.outstanding_at_scrape = 0

    # --- serving ---

    def serving(self) -> bool:
        """True when it may take new requests."""
        return self.current_state() in SERVING

    def current_state(self) -> str:
        """The state, after a recovering replica that has ramped up long enough became healthy."""
        if self.state == RECOVERING and self.clock() - self.state_since >= self.policy.recovery:
            self._enter(HEALTHY)
        return self.state

    def effective_weight(self) -> float:
        """Its weight, reduced while it recovers."""
        if self.current_state() != RECOVERING or self.policy.recovery <= 0:
            return self.weight
        ramp = (self.clock() - self.state_since) / self.policy.recovery
        return self.weight * max(RECOVERY_START_SHARE, min(1.0, ramp))

    def serves(self, model: str) -> bool:
        return self.models is not None and model in self.models

    def answers(self, path: str) -> bool:
        """False when it is known not to serve the route `path`."""
        return self.routes is None or path in self.routes

    # --- load ---

    def acquire(self) -> None:
        """A request of this worker goes to it."""
        self.outstanding += 1
        self.requests += 1
        request_started.send(self)

    def release(self) -> None:
        """A request of this worker has finished with it."""
        self.outstanding -= 1
        request_ended.send(self)

    def set_load(self, load: Load | None) -> None:
        """Figures just read from its /metrics (None: unknown)."""
        self.load = load
        self.outstanding_at_scrape = self.outstanding
        observed.send(self)

    def queue_estimate(self) -> float:
        """Requests at the replica now: its own figures as last read, plus what this worker sent since."""
        if self.load is None:
            return float(self.outstanding)
        since_scrape = self.outstanding - self.outstanding_at_scrape
        return max(float(self.outstanding), self.load.running + self.load.waiting + since_scrape)

    def load_score(self) -> float:
        """How busy it is for its capacity: lower is a better choice."""
        waiting = self.load.waiting if self.load else 0.0
        kv_cache = self.load.kv_cache_usage if self.load else 0.0
        busy = self.queue_estimate() + WAITING_WEIGHT * waiting + KV_CACHE_WEIGHT * kv_cache
        return busy / self.effective_weight()

    # --- health ---

    def record_success(self) -> None:
        """A request got an answer from it (even a client fault: the replica works)."""
        self.consecutive_failures = 0

    def record_failure(self, code: str, reason: str) -> None:
        """A request failed because of it (down, overloaded, broken, too slow)."""
        self.failures[code] += 1
        failed.send(self, code=code)
        self.consecutive_failures += 1
        if self.current_state() == RECOVERING or self.consecutive_failures >= self.policy.eject_after:
            self.eject(f"{self.consecutive_failures} failed request(s), the last: {reason}")

    def health_failed(self, reason: str) -> None:
        """Its health check failed: out at once (a replica that says it is unwell is not sent work)."""
        if self.state != EJECTED:
            self.eject(f"health check failed: {reason}")

    def health_passed(self) -> None:
        """Its health check passed: an ejected replica whose cooldown is over starts to return."""
        if self.state == EJECTED and self.clock() >= self.ejected_until:
            self.consecutive_failures = 0
            self._enter(RECOVERING)

    def eject(self, reason: str) -> None:
        """Take it out of rotation for the cooldown (from now, if it was out already)."""
        self.reason = reason
        self.ejected_until = self.clock() + self.policy.cooldown
        self.load = None  # figures from before are no guide to after
        self._enter(EJECTED)

    def _enter(self, state: str) -> None:
        if state == self.state:
            return
        if state == EJECTED:
            self.ejections += 1
            log.warning("replica %s ejected for %g s: %s", self.url, self.policy.cooldown, self.reason)
        else:
            log.info("replica %s is %s", self.url, state)
        if state == HEALTHY:
            self.reason = ""  # back in full: the last ejection no longer explains anything
        self.state, self.state_since = state, self.clock()
        observed.send(self)

    def snapshot(self) -> dict[str, Any]:
        """Its figures for /readyz and metrics."""
        return {
            "url": self.url, "kind": self.kind, "state": self.current_state(), "reason": self.reason or None,
            "weight": self.weight, "effective_weight": round(self.effective_weight(), 3),
            "models": list(self.models) if self.models is not None else None,
            "outstanding": self.outstanding, "requests": self.requests, "failures": dict(self.failures),
            "consecutive_failures": self.consecutive_failures, "ejections": self.ejections,
            "running": self.load.running if self.load else None,
            "waiting": self.load.waiting if self.load else None,
            "kv_cache_usage": self.load.kv_cache_usage if self.load else None,
        }
