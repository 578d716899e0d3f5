"""Requests per minute per caller, with flask-limiter: a key's own rpm, else SLUICE_DEFAULT_RPM.

Over a WebSocket each generation counts as one request, in the same bucket an HTTP request
counts in (`count_generation`); the handshake itself counts nothing, but is refused once the
caller's budget is spent.

The counts live in Redis when it is configured, so a limit is exact across workers and
hosts. They reach Redis through `SharedStorage`, which puts them under the gateway's one
outage policy (app/access/shared_state.py) instead of flask-limiter's own fallback. Without
Redis they are counted per worker process, and the gateway says so loudly at start.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, has_app_context, request
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter, RateLimitExceeded
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage, Storage

from app.access.auth import client_identity, is_open_path, key_limit
from app.access.shared_state import SharedState, get_shared_state, run_script
from app.errors import ApiError, RateLimited, error_response
from app.observe import metrics

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


KEY_PREFIX = "sluice"
# flask-limiter's scope for application-wide limits: with the prefix and the caller, it names
# the bucket an HTTP request counts in, which a WebSocket generation must count in too.
APPLICATION_SCOPE = "global"


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


def is_websocket_handshake() -> bool:
    """Whether this request opens a WebSocket (its generations are counted one by one instead)."""
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _not_counted() -> bool:
    return key_limit("rpm") == 0 or is_websocket_handshake()


def _caller_bucket() -> tuple[RateLimitItem, list[str]]:
    return parse(_rpm()), [KEY_PREFIX, client_identity(), APPLICATION_SCOPE]


def _spent(item: RateLimitItem) -> RateLimited:
    whose = "this key" if g.get("key_name") else "this client address"
    return RateLimited(f"Request limit of {item} reached for {whose}; see Retry-After.", code="rate_limit_exceeded")


def count_generation() -> None:
    """Count one WebSocket generation as one request of its caller; 429 (an ApiError) when the budget is spent."""
    if key_limit("rpm") == 0:
        return
    limiter: Limiter = current_app.extensions[EXTENSION]
    item, bucket = _caller_bucket()
    if not limiter.limiter.hit(item, *bucket):
        metrics.count_rejection("rate")  # an HTTP 429 is counted by its status; this one is a message
        raise _spent(item)


def _refuse_spent_handshake() -> None:
    if is_websocket_handshake() and key_limit("rpm") and not is_open_path():
        limiter: Limiter = current_app.extensions[EXTENSION]
        item, bucket = _caller_bucket()
        if not limiter.limiter.test(item, *bucket):
            error = _spent(item)
            reset_at = limiter.limiter.get_window_stats(item, *bucket).reset_time
            error.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
            raise error


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
    return error_response(_spent(exc.limit.limit))


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
        application_limits_exempt_when=_not_counted,
        strategy="fixed-window",
        storage_uri=storage_uri,
        storage_options=storage_options,  # type: ignore[arg-type]  # our storage takes the state object
        headers_enabled=False,  # ours below: they must not turn a Redis hiccup into a 500
        key_prefix=KEY_PREFIX,
    )
    limiter.request_filter(is_open_path)
    limiter.init_app(app)
    app.before_request(_refuse_spent_handshake)
    app.extensions[EXTENSION] = limiter
    app.after_request(partial(_rate_headers, limiter))
    app.register_error_handler(RateLimitExceeded, _breached)
