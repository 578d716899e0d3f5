"""One generation's record, from the moment it goes upstream to its last byte.

Metrics, logs and token accounting read it when it finishes (the `finished` signal; the
`opened` signal marks its start), so that the request path itself knows nothing of them.
A stream finishes after its view has returned, when the relay ends; a blocking generation
finishes inside its view.
"""
from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from blinker import Namespace

from app.errors import ApiError
from app.relay.disconnect import ClientCancelled

_signals = Namespace()
opened = _signals.signal("sluice.exchange-opened")
finished = _signals.signal("sluice.exchange-finished")

COMPLETED = "completed"
CLIENT_CANCELLED = "client_cancelled"
UPSTREAM_ERROR = "upstream_error"
REJECTED = "rejected"  # refused at admission (limits, a full gateway) before going upstream
# What a request costs, for token limits: a generation its prompt and what it may generate,
# a pooling request (embeddings, scores) its input, a tokenizer request nothing.
GENERATION, INPUT_ONLY, NO_TOKENS = "generation", "input", "none"
CLIENT_CLOSED_STATUS = 499  # nginx's code for "client closed the request"

# A usage object inside a chunk's JSON (vLLM writes "usage": null in the others).
_HAS_USAGE = re.compile(rb'"usage":\s*\{')


@dataclass
class Exchange:
    """What happened to one generation: who, where, how many tokens, how long, how it ended."""

    request_id: str
    route: str
    model: str
    stream: bool
    key_name: str | None = None
    replica: str | None = None
    started: float = field(default_factory=time.perf_counter)
    # perf_counter() at each upstream event: one append per token is all the hot path pays;
    # time to first token and the gaps between tokens are derived from it at the end.
    arrivals: array[float] = field(default_factory=lambda: array("d"))
    # Time spent blocked on the upstream (opening it, reading a whole body): the rest of a
    # request's time is the gateway's own overhead.
    upstream_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: str | None = None
    status: int = 200
    error_code: str | None = None
    duration: float = 0.0
    work: str = GENERATION
    # What admission (app/access/admission.py) holds for this generation; given back when it finishes.
    admission: Any = field(default=None, repr=False, compare=False)
    # Its slot of the replicas' capacity (app/access/replica_slots.py), likewise given back.
    turn: Any = field(default=None, repr=False, compare=False)
    # vLLM's `priority` for it (lower is served first), sent to replicas scheduling by priority.
    vllm_priority: int | None = None
    # The usage ledger's writer of the app that opened it (app/ledger/recorder.py); None: no ledger.
    ledger: Any = field(default=None, repr=False, compare=False)
    usage_reported: bool = False  # the upstream sent its token counts (else they were counted from the stream)

    def __post_init__(self) -> None:
        opened.send(self)

    def record_usage(self, usage: Any) -> None:
        """Take the upstream's token counts (a usage object), ignoring anything malformed."""
        if isinstance(usage, dict):
            self.usage_reported = True
            # Chat, completions, embeddings and scores say prompt/completion; the Responses API input/output.
            self.prompt_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)

    def saw_event(self, data: bytes) -> bool:
        """Note one upstream event's arrival; True when it carries the usage object."""
        self.arrivals.append(time.perf_counter())
        return _HAS_USAGE.search(data) is not None

    def saw_token(self) -> None:
        """Note the arrival of an event that carries generated text (streams whose other events do not)."""
        self.arrivals.append(time.perf_counter())

    @contextmanager
    def waiting_upstream(self) -> Iterator[None]:
        """Count the time inside this block as spent waiting on the upstream."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.upstream_seconds += time.perf_counter() - began

    @property
    def events_relayed(self) -> int:
        return len(self.arrivals)

    @property
    def usage_known(self) -> bool:
        return self.completion_tokens > 0 or self.prompt_tokens > 0

    @property
    def ttft_seconds(self) -> float | None:
        return self.arrivals[0] - self.started if self.arrivals else None

    def token_gaps(self) -> list[float]:
        """Seconds between consecutive upstream events (time between tokens)."""
        times = self.arrivals
        return [times[i] - times[i - 1] for i in range(1, len(times))]

    def finish(self, outcome: str, status: int = 200, error_code: str | None = None) -> None:
        """Close the record once and tell the subscribers (metrics, logs, token limits)."""
        if self.outcome is not None:
            return
        if not self.usage_known:
            # A stream cut short never got its usage chunk: count what was relayed, one
            # event per generated token as vLLM emits them, so cut streams still count.
            self.completion_tokens = self.events_relayed
        self.outcome, self.status, self.error_code = outcome, status, error_code
        self.duration = time.perf_counter() - self.started
        finished.send(self)


@contextmanager
def failures_recorded(exchange: Exchange, outcome: str = UPSTREAM_ERROR) -> Iterator[None]:
    """Finish `exchange` with the error (as `outcome`) or client cancellation that leaves this block."""
    try:
        yield
    except ApiError as exc:
        exchange.finish(outcome, exc.status, exc.code)
        raise
    except (ClientCancelled, GeneratorExit):  # GeneratorExit: a write to the client failed
        exchange.finish(CLIENT_CANCELLED, CLIENT_CLOSED_STATUS)
        raise
    except Exception:
        # A bug of ours: still finish, so that admission gives back what it holds.
        exchange.finish(UPSTREAM_ERROR, 500, "internal_error")
        raise
