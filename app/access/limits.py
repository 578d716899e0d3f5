"""Requests per minute per caller, with flask-limiter: a key's own rpm, else SLUICE_DEFAULT_RPM.

The counts live in Redis when it is configured, so a limit is exact across workers and
hosts. They reach Redis through `SharedStorage`, which puts them under the gateway's one
outage policy (app/access/shared_state.py) instead of flask-limiter's own fallback. Without
Redis they are counted per worker process, and the gateway says so loudly at start.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from flask import Flask, Response, g, has_app_context
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter, RateLimitExceeded
from limits.storage import MemoryStorage, RedisStorage, Storage

from app.access.auth import client_identity, is_open_path, key_limit
from app.access.shared_state import SharedState, get_shared_state, run_script
from app.errors import ApiError, RateLimited, error_response

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTENSION = "sluice.limits"


# limits' own increment (INCRBY, and EXPIRE on a new window) that also answers the window's
# time left, so that the response's X-RateLimit headers need no further round trip.
_HIT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""
_WINDOWS = "_sluice_limit_windows"  # on flask.g: key -> (count, ends at) as this request's hit left them


class SharedStorage(Storage):
    """flask-limiter's counters in Redis under the outage policy: in this process's memory when failing open.

    A request's hit answers its window too: the headers' reads of that window (`get`,
    `get_expiry`) in the same request are served from it.
    """

    STORAGE_SCHEME = ["sluice+redis"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *, state: SharedState,
                 **options: Any) -> None:
        super().__init__(uri, wrap_exceptions)
        self.state = state
        assert state.client is not None
        self.redis = RedisStorage("redis://", connection_pool=state.client.connection_pool)
        self.memory = MemoryStorage()
        self._hit = state.client.register_script(_HIT)

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return ()  # Redis errors never get here: the outage policy has dealt with them

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.state.call("limits.hit", lambda: self._redis_hit(key, expiry, amount),
                               lambda: self.memory.incr(key, expiry, amount))

    def get(self, key: str) -> int:
        seen = _this_request_windows().get(key)
        return seen[0] if seen else self._call("limits.read", lambda s: s.get(key))

    def get_expiry(self, key: str) -> float:
        seen = _this_request_windows().get(key)
        return seen[1] if seen else self._call("limits.read", lambda s: s.get_expiry(key))

    def _redis_hit(self, key: str, expiry: int, amount: int) -> int:
        count, ttl_ms = run_script(self.state.client, self._hit, [self.redis.prefixed_key(key)],  # type: ignore[arg-type]
                                   [expiry, amount])
        if has_app_context():
            _this_request_windows()[key] = (int(count), time.time() + max(0, ttl_ms) / 1000)
        return int(count)

    def check(self) -> bool:
        return self.redis.check()

    def reset(self) -> int | None:
        return self._call("limits.reset", lambda s: s.reset())

    def clear(self, key: str) -> None:
        self._call("limits.clear", lambda s: s.clear(key))

    def _call(self, operation: str, use: Callable[[Storage], T]) -> T:
        return self.state.call(operation, lambda: use(self.redis), lambda: use(self.memory))


def _this_request_windows() -> dict[str, tuple[int, float]]:
    """The windows this request's hits have seen (none outside a request)."""
    if not has_app_context():
        return {}
    windows: dict[str, tuple[int, float]] | None = g.get(_WINDOWS)
    if windows is None:
        windows = {}
        setattr(g, _WINDOWS, windows)
    return windows


def _rpm() -> str:
    # Never asked for a caller without a limit (exempt below); "0 per minute" would refuse all.
    return f"{max(1, key_limit('rpm'))} per minute"


def _rate_headers(limiter: Limiter, response: Response) -> Response:
    """X-RateLimit-Limit, -Remaining, -Reset (epoch seconds); Retry-After when the limit was hit."""
    limit = limiter.current_limit
    if limit is None:
        return response
    try:
        reset_at, remaining = limit.reset_at, limit.remaining
    except ApiError:
        return response  # Redis went away since the check (failing closed): the headers are advice
    response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(max(0, remaining))
    response.headers["X-RateLimit-Reset"] = str(reset_at)
    if limit.breached:
        response.headers["Retry-After"] = str(max(1, reset_at - int(time.time())))
    return response


def _breached(exc: RateLimitExceeded) -> ResponseReturnValue:
    whose = "this key" if g.get("key_name") else "this client address"
    return error_response(RateLimited(f"Request limit of {exc.limit.limit} reached for {whose}; see Retry-After.",
                                      code="rate_limit_exceeded"))


def init_app(app: Flask) -> None:
    """Count every request (but the open paths) against its caller's requests-per-minute limit."""
    state = get_shared_state(app)
    if state.client is None:
        workers = app.config["WORKERS"]
        log.warning("SLUICE_REDIS_URL is not set: request, token and concurrency limits are counted PER WORKER "
                    "PROCESS, so a client may get up to %d times its limits here (%d workers), and hosts do not "
                    "share them. Configure Redis for exact limits.", workers, workers)
        storage_uri, storage_options = "memory://", {}
    else:
        storage_uri, storage_options = "sluice+redis://", {"state": state}
    limiter = Limiter(
        key_func=client_identity,
        application_limits=[_rpm],  # one budget per caller across every route
        application_limits_exempt_when=lambda: key_limit("rpm") == 0,
        strategy="fixed-window",
        storage_uri=storage_uri,
        storage_options=storage_options,  # type: ignore[arg-type]  # our storage takes the state object
        headers_enabled=False,  # ours below: they must not turn a Redis hiccup into a 500
        key_prefix="sluice",
    )
    limiter.request_filter(is_open_path)
    limiter.init_app(app)
    app.extensions[EXTENSION] = limiter
    app.after_request(partial(_rate_headers, limiter))
    app.register_error_handler(RateLimitExceeded, _breached)
