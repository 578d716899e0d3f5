"""From a finished generation to its ledger row: the Exchange `finished` signal feeds this worker's writer.

Every generation that reached admission has an Exchange, refused ones included (finished as
"rejected" with the refusing limit's code), so each gets exactly one row.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app, has_app_context

from app.exchange import CLIENT_CANCELLED, REJECTED, Exchange, finished, opened
from app.ledger.tables import utcnow
from app.ledger.writer import BatchWriter

EXTENSION = "sluice.ledger.writer"
OUTCOMES = {CLIENT_CANCELLED: "cancelled", REJECTED: "refused"}  # the others keep their name


def row_for(exchange: Exchange) -> dict[str, Any]:
    """The ledger row of a finished generation: the tokens the budget and the token limit counted."""
    prompt, completion = billed_tokens(exchange)
    ttft = exchange.ttft_seconds
    outcome = exchange.outcome or "unknown"
    return {
        "time": utcnow() - timedelta(seconds=exchange.duration),
        "request_id": exchange.request_id[:128],
        "key_name": exchange.key_name,
        "route": exchange.route[:128],
        "model": str(exchange.model)[:256],
        "replica": exchange.replica[:256] if exchange.replica else None,
        "stream": exchange.stream,
        "outcome": OUTCOMES.get(outcome, outcome),
        "error_code": exchange.error_code,
        "status": exchange.status,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "usage_reported": exchange.usage_reported,
        "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
        "duration_ms": round(exchange.duration * 1000, 3),
    }


def billed_tokens(exchange: Exchange) -> tuple[int, int]:
    """(prompt, completion) as admission settled them (its estimate of the prompt for a cut stream)."""
    billed = getattr(exchange.admission, "billed_tokens", None)
    return billed(exchange) if billed is not None else (exchange.prompt_tokens, exchange.completion_tokens)


@opened.connect
def _attach(exchange: Exchange) -> None:
    # The Exchange is opened inside its request: remember this app's writer, since a stream
    # finishes after its view has returned, possibly outside the app's context.
    if has_app_context():
        exchange.ledger = current_app.extensions.get(EXTENSION)


@finished.connect
def _record(exchange: Exchange) -> None:
    writer: BatchWriter | None = exchange.ledger
    if writer is not None:
        writer.add(row_for(exchange))
