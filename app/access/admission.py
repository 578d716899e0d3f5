"""Admission: whether a generation may start now, and giving back what it held when it ends.

`admit` is called once per generation, from app/gateway.py, before anything goes upstream:
1. the caller's cap on generations in flight (429 at the cap),
2. the caller's token limit for the window, reserved at an estimate (429 when spent),
   and its key's budget for the day or month (app/access/budgets.py; 429 budget_exceeded),
3. this worker's bound on generations in flight, with a bounded, timed wait (503 when full).
What it holds is given back when the generation's Exchange finishes (for a stream, when
the relay ends, however it ends), and the token reservation is settled to the real count.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from gevent.lock import BoundedSemaphore

from app.access import replica_slots
from app.access.auth import client_identity, key_limit
from app.access.budgets import Budget, BudgetCounter, Budgets, Seed, budget_of
from app.access.counters import Counters, MemoryCounters, RedisCounters, Slot, Tokens
from app.access.releases import BatchedReleases
from app.access.shared_state import SharedState, get_shared_state
from app.errors import RateLimited, Unavailable
from app.exchange import GENERATION, NO_TOKENS, Exchange, finished
from app.ledger import EXTENSION as LEDGER_EXTENSION
from app.ledger.tables import utcnow
from app.observe import metrics
from app.relay import after_send
from app.relay.disconnect import cancel_on_disconnect

EXTENSION = "sluice.admission"
T = TypeVar("T")
CHARS_PER_TOKEN = 4  # a rough, tokenizer-free estimate; settled to the upstream's count afterwards
# The fields of a request that the model reads as input: the prompt of completions,
# messages of chat, input and instructions of the Responses API and of embeddings, the
# texts compared by /score and /rerank.
PROMPT_FIELDS = ("prompt", "messages", "input", "instructions", "query", "documents", "queries", "items",
                 "text_1", "text_2", "data_1", "data_2")


class WorkerGate:
    """This worker's bound on generations in flight, with a bounded queue and a timed wait."""

    def __init__(self, slots: int, queue: int, timeout: float) -> None:
        self._slots = BoundedSemaphore(slots)
        self._queue = queue
        self._timeout = timeout
        self.waiting = 0

    def try_enter(self) -> bool:
        """Take a slot if one is free now."""
        return bool(self._slots.acquire(blocking=False))

    def wait(self) -> None:
        """Wait for a slot, up to the timeout, in a queue of bounded length; 503 when neither works out."""
        retry = {"Retry-After": str(max(1, math.ceil(self._timeout)))}
        if self.waiting >= self._queue:
            raise Unavailable("The gateway is at capacity; retry shortly.", code="gateway_full", headers=retry)
        self.waiting += 1
        try:
            with metrics.waiting():
                admitted = self._slots.acquire(timeout=self._timeout)
        finally:
            self.waiting -= 1
        if not admitted:
            raise Unavailable(f"No generation slot freed within {self._timeout:g} s; retry shortly.",
                              code="gateway_busy", headers=retry)

    def leave(self) -> None:
        self._slots.release()


def prompt_estimate(payload: dict[str, Any]) -> int:
    """Tokens in a request's input (prompt, messages, texts to embed or score), estimated from their length."""
    chars = sum(_text_length(payload.get(name)) for name in PROMPT_FIELDS)
    return math.ceil(chars / CHARS_PER_TOKEN)


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return CHARS_PER_TOKEN  # a token id
    if isinstance(value, list):
        return sum(_text_length(item) for item in value)
    if isinstance(value, dict):  # a chat message, or a content part
        return _text_length(value.get("content")) + _text_length(value.get("text"))
    return 0


@dataclass
class Admission:
    """What one generation holds: a worker slot, a key slot, a token reservation."""

    admitter: Admitter
    identity: str
    prompt_estimate: int
    in_gate: bool = False
    slot: str | None = None
    slot_backend: Counters | None = None
    reserved: int = 0
    token_limit: int = 0
    tokens_used: float = 0  # in the window, this reservation included
    token_backend: Counters | None = None
    budget: Budget | None = None
    budget_reserved: int = 0
    budget_counter: BudgetCounter | None = None

    def release(self, exchange: Exchange | None) -> None:
        """Give everything back; settle the token reservation to what `exchange` really used."""
        admitter = self.admitter
        if self.in_gate:
            self.in_gate = False
            admitter.gate.leave()
        backend = self.slot_backend or self.token_backend  # one hold took both
        slot, self.slot = self.slot or "", None
        delta = 0
        if self.reserved and self.token_backend is not None:
            delta, self.reserved = self.tokens_spent(exchange) - self.reserved, 0
        if self.budget_reserved and self.budget is not None and self.budget_counter is not None:
            spent, self.budget_reserved = self.tokens_spent(exchange) - self.budget_reserved, 0
            if spent:
                admitter.budgets.settle(self.budget_counter, self.budget, spent)
        if backend is None or not (slot or delta):
            return
        slots, tokens = Slot(admitter.bucket("inflight", self.identity), slot), \
            Tokens(admitter.bucket("tokens", self.identity), delta)

        def give_back() -> None:
            admitter.release(backend, slots, tokens)
        # A blocking answer's client need not wait for this round trip: after the response is
        # sent. (A stream's relay ends after its last byte anyway; a WebSocket runs several
        # generations in one request, each of which must give its slot back at its end.)
        if exchange is not None and not exchange.stream:
            after_send.defer(give_back)
        else:
            give_back()

    def tokens_spent(self, exchange: Exchange | None) -> int:
        """Prompt plus completion tokens: the upstream's count, or for a cut stream an estimate and what was relayed."""
        return sum(self.billed_tokens(exchange)) if exchange is not None else 0  # None: refused before it began

    def billed_tokens(self, exchange: Exchange) -> tuple[int, int]:
        """(prompt, completion) as counted against limits and budgets (and written to the ledger)."""
        if not exchange.completion_tokens:
            return exchange.prompt_tokens, 0  # nothing generated: the upstream failed or refused it
        # A stream cut before its usage chunk has no prompt count (Exchange.finish counted
        # its relayed events as its completion): take the estimate.
        return exchange.prompt_tokens or self.prompt_estimate, exchange.completion_tokens


class Admitter:
    """Per-app admission: the worker gate, and the counters in Redis or (fallback) in memory."""

    def __init__(self, state: SharedState, gate: WorkerGate, *, token_window: float, slot_ttl: float,
                 budget_seed: Seed = lambda key_name, since: None) -> None:
        self.state = state
        self.budgets = Budgets(state, budget_seed)
        self.gate = gate
        self.token_window = token_window
        self.slot_ttl = slot_ttl
        self.memory = MemoryCounters()
        self.redis = RedisCounters(state.client) if state.client is not None else None
        self.releases = BatchedReleases(self.redis, state) if self.redis is not None else None

    @staticmethod
    def bucket(kind: str, identity: str) -> str:
        return f"sluice:{kind}:{identity}"

    def admit(self, identity: str, *, prompt: int, estimate: int, tpm: int, max_concurrent: int,
              environ: dict[str, Any], budget: Budget | None = None) -> Admission:
        """Hold what a generation needs, or raise 429/503 holding nothing."""
        admission = Admission(self, identity, prompt)
        try:
            if max_concurrent or tpm:
                self._hold(admission, max_concurrent, estimate, tpm)
            if budget is not None:
                self._charge_budget(admission, budget, estimate)
            if not self.gate.try_enter():
                with cancel_on_disconnect(environ):  # a client that leaves while queued frees its place
                    self.gate.wait()
            admission.in_gate = True
        except BaseException:
            admission.release(None)
            raise
        return admission

    def _hold(self, admission: Admission, cap: int, estimate: int, limit: int) -> None:
        """The caller's in-flight slot and token reservation, in one round trip; 429 holding neither."""
        slots = Slot(self.bucket("inflight", admission.identity), uuid.uuid4().hex if cap else "", cap, self.slot_ttl)
        tokens = Tokens(self.bucket("tokens", admission.identity), estimate, limit, self.token_window)
        backend, (taken, fits, value) = self._on_counters("admission.hold",
                                                          lambda c: c.hold(slots, tokens))
        if not taken:
            raise RateLimited(f"This key already has {cap} generations in flight, its limit; retry when one ends.",
                              code="concurrency_limit_exceeded", headers={"Retry-After": "1"})
        if not fits:
            alone = " (more than the whole limit: lower max_tokens)" if estimate > limit else ""
            raise RateLimited(
                f"Token limit of {limit} per {self.token_window:g} s reached for this key: this request may use "
                f"about {estimate} tokens{alone}.", code="token_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(value))), "X-RateLimit-Limit-Tokens": str(limit)})
        if cap:
            admission.slot, admission.slot_backend = slots.slot, backend
        if limit:
            admission.reserved, admission.token_limit, admission.tokens_used = estimate, limit, value
            admission.token_backend = backend

    def _charge_budget(self, admission: Admission, budget: Budget, estimate: int) -> None:
        now = utcnow()
        counter, fits, used = self.budgets.reserve(budget, estimate, now)
        if not fits:
            alone = " (more than the whole budget: lower max_tokens)" if estimate > budget.tokens else ""
            raise RateLimited(
                f"Token budget of {budget.tokens} per {budget.period} reached for this key ({used} used; this request "
                f"may use about {estimate}{alone}). It renews at {budget.end:%Y-%m-%d %H:%M} UTC.",
                code="budget_exceeded", headers={"Retry-After": str(math.ceil(budget.seconds_left(now)))})
        admission.budget, admission.budget_reserved, admission.budget_counter = budget, estimate, counter

    def _on_counters(self, operation: str, use: Callable[[Counters], T]) -> tuple[Counters, T]:
        """use(Redis counters), or this process's when Redis is absent or down and failing open."""
        def in_memory() -> tuple[Counters, T]:
            return self.memory, use(self.memory)
        if self.redis is None:
            return in_memory()
        redis_counters = self.redis
        return self.state.call(operation, lambda: (redis_counters, use(redis_counters)), in_memory)

    def release(self, backend: Counters, slots: Slot, tokens: Tokens) -> None:
        """Give back a slot and settle tokens on the backend that held them (Redis: batched, never raises)."""
        if backend is self.memory or self.releases is None:
            backend.release(slots, tokens)
        else:
            self.releases.add(slots, tokens)

    def give_back(self, backend: Counters, operation: str, use: Callable[[Counters], object]) -> None:
        """Release on the backend that took the hold; never raises (what is lost expires)."""
        if backend is self.memory:
            use(backend)
        else:
            self.state.best_effort(operation, lambda: use(backend))


def admit(exchange: Exchange, payload: dict[str, Any]) -> None:
    """Admit this request's generation or refuse it (429, 503); it is released when `exchange` finishes."""
    admitter: Admitter = current_app.extensions[EXTENSION]
    prompt = prompt_estimate(payload) if exchange.work != NO_TOKENS else 0
    output = completions(payload) * max_tokens(payload) if exchange.work == GENERATION else 0
    exchange.admission = g.admission = admitter.admit(
        client_identity(), prompt=prompt, estimate=prompt + output, tpm=key_limit("tpm"),
        max_concurrent=key_limit("max_concurrent"), environ=request.environ,
        budget=budget_of(g.get("key_record"), utcnow()))


def completions(payload: dict[str, Any]) -> int:
    """How many completions the upstream generates: `n`, or `best_of` where larger (it generates them all)."""
    counts = [value for value in (payload.get("n"), payload.get("best_of"))
              if isinstance(value, int) and not isinstance(value, bool)]
    return max([1, *counts])


def max_tokens(payload: dict[str, Any]) -> int:
    """The most a generation may produce: its max_tokens, else the largest any request may ask for."""
    value = payload.get("max_tokens") or payload.get("max_completion_tokens") or payload.get("max_output_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return int(current_app.config["MAX_TOKENS_LIMIT"])


@finished.connect
def _release(exchange: Exchange) -> None:
    if isinstance(exchange.admission, Admission):
        exchange.admission.release(exchange)


def _token_headers(response: Response) -> Response:
    admission: Admission | None = g.get("admission")
    if admission is not None and admission.token_limit:
        response.headers["X-RateLimit-Limit-Tokens"] = str(admission.token_limit)
        remaining = max(0, admission.token_limit - int(admission.tokens_used))
        response.headers["X-RateLimit-Remaining-Tokens"] = str(remaining)
    return response


def init_app(app: Flask) -> None:
    """Create this worker's gate and counters."""
    gate = WorkerGate(app.config["MAX_IN_FLIGHT"], app.config["ADMISSION_QUEUE"], app.config["ADMISSION_TIMEOUT"])
    ledger = app.extensions.get(LEDGER_EXTENSION)  # budgets are seeded from the ledger's rows
    app.extensions[EXTENSION] = Admitter(get_shared_state(app), gate, token_window=app.config["TOKEN_WINDOW"],
                                         slot_ttl=app.config["KEY_SLOT_TTL"],
                                         **({"budget_seed": ledger.tokens_since} if ledger is not None else {}))
    app.after_request(_token_headers)
    replica_slots.init_app(app)  # the replicas' capacity and its fair queue: the next step of admission
