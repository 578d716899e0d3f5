"""Redis, the state every worker and host shares, and what happens when it cannot be reached.

Every Redis call of the access-control path goes through `SharedState.call`, so the outage
policy (SLUICE_REDIS_FAILURE_MODE) lives in one place: fail open (this process's own
counters meanwhile, a warning, the `degraded` signal for metrics) or fail closed (503).
Never a 500, and never a long wait: a Redis that failed is left alone for a moment.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent.queue
import redis
from blinker import Namespace
from flask import Flask, current_app
from flask.typing import ResponseReturnValue
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.driver_info import DriverInfo
from redis.retry import Retry

from app.errors import Unavailable, error_response

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTENSION = "sluice.shared_state"
# Seconds a failed Redis is left alone before the next attempt: during an outage a request
# pays for at most one failed attempt per second per worker, not one per call.
RECHECK_AFTER = 1.0

_signals = Namespace()
# Sent (sender: the SharedState, operation="...") each time an operation is served without
# Redis, or refused for want of it: the metrics module counts these.
degraded = _signals.signal("sluice.redis-degraded")


def connect(url: str, timeout: float, max_connections: int | None = None) -> redis.Redis:
    """A pooled Redis client that gives up after `timeout` seconds and never retries by itself.

    With `max_connections`, a call waits (at most `timeout`) for a free connection instead of
    opening one more: unbounded, a burst of 2,000 streams opened 1,127 connections, each a
    client Redis keeps buffers for.
    """
    # redis-py 7 retries 3 times with backoff by default; the outage policy needs a prompt answer.
    # The driver's version, given once: else every new pooled connection looks it up in the
    # installed packages' metadata.
    options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0), "driver_info": DriverInfo(lib_version=redis.__version__)}
    if max_connections is None:
        return redis.Redis.from_url(url, **options)
    # gevent's queue (compiled) to wait in: the standard one's lock and condition variables cost
    # about 3 % of a blocking request's instructions, for three checkouts.
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout,
                                                 queue_class=gevent.queue.LifoQueue, **options)
    return redis.Redis.from_pool(pool)


def run_script(client: redis.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    """The script's reply, by EVALSHA on a pooled connection.

    Without redis-py's per-command machinery (retry wrapper, observability hooks, reply
    callbacks: retries are off here and a script's reply needs no parsing), which costs about
    a third of its CPU per call on the hot path. A Redis that lost the script (a restart)
    gets it loaded by redis-py's own call.
    """
    pool = client.connection_pool
    connection: Any = pool.get_connection()  # redis-py leaves its connection methods untyped
    try:
        connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return connection.read_response()
    except redis.exceptions.NoScriptError:
        pass
    except BaseException:
        connection.disconnect()  # an exchange cut halfway: a reply may still be on its way
        raise
    finally:
        pool.release(connection)
    return script(keys=keys, args=args)


class SharedState:
    """The Redis client (None when not configured) and the policy for when it does not answer."""

    def __init__(self, client: redis.Redis | None, fail_open: bool) -> None:
        self.client = client
        self.fail_open = fail_open
        self._down_since: float | None = None
        self._retry_at = 0.0

    def call(self, operation: str, redis_call: Callable[[], T], fallback: Callable[[], T]) -> T:
        """redis_call() when Redis answers; else fallback() when failing open (or not configured), else 503."""
        if self.client is None:
            return fallback()
        if time.monotonic() >= self._retry_at:
            try:
                result = redis_call()
            except redis.RedisError as exc:
                self._failed(operation, exc)
            else:
                self._answered()
                return result
        degraded.send(self, operation=operation)
        if not self.fail_open:
            raise unavailable()
        return fallback()

    def best_effort(self, operation: str, redis_call: Callable[[], object]) -> None:
        """redis_call(), or nothing when Redis does not answer (releases: an expiry cleans up after them)."""
        try:
            self.call(operation, redis_call, lambda: None)
        except Unavailable:
            pass  # failing closed refuses new work; a release has nothing to refuse

    def _failed(self, operation: str, exc: Exception) -> None:
        now = time.monotonic()
        self._retry_at = now + RECHECK_AFTER
        # Idle pooled connections are to the Redis that failed: after a restart each would
        # fail once more, one recheck interval at a time. Reconnect afresh instead.
        self.client.connection_pool.disconnect(inuse_connections=False)  # type: ignore[union-attr]
        if self._down_since is None:
            self._down_since = now
            what = ("serving with this process's own limits meanwhile" if self.fail_open
                    else "refusing requests with 503 meanwhile")
            log.warning("Redis unreachable (%s during %s): %s (SLUICE_REDIS_FAILURE_MODE=%s)",
                        type(exc).__name__, operation, what, "open" if self.fail_open else "closed")

    def _answered(self) -> None:
        if self._down_since is not None:
            log.warning("Redis reachable again after %.1f s: shared limits resume", time.monotonic() - self._down_since)
            self._down_since = None


def unavailable() -> Unavailable:
    """The 503 for a request that needs Redis while it is down and the policy is to fail closed."""
    return Unavailable("The gateway's shared state (Redis) is unreachable; retry shortly.",
                       code="redis_unavailable", headers={"Retry-After": str(math.ceil(RECHECK_AFTER))})


def init_app(app: Flask) -> None:
    """Connect (lazily) to SLUICE_REDIS_URL, if set, with the configured outage policy."""
    url = app.config["REDIS_URL"]
    client = connect(url, app.config["REDIS_TIMEOUT"], app.config["REDIS_MAX_CONNECTIONS"]) if url else None
    app.extensions[EXTENSION] = SharedState(client, fail_open=app.config["REDIS_FAILURE_MODE"] == "open")

    @app.errorhandler(redis.RedisError)
    def _redis_error(exc: redis.RedisError) -> ResponseReturnValue:
        # A Redis call that escaped the policy above is a bug; still a 503, never a 500.
        log.error("Redis error outside the outage policy: %s", exc)
        return error_response(unavailable())


def get_shared_state(app: Flask | None = None) -> SharedState:
    """The app's shared state (Redis and its outage policy)."""
    state: SharedState = (app or current_app).extensions[EXTENSION]
    return state
