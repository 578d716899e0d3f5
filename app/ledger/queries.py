"""Reading the ledger: usage summaries (`sluice usage`, GET /v1/usage), budget seeds, retention pruning."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from app.ledger.tables import ledger, utcnow

GROUPINGS = ("key", "model", "day", "route")
PRUNE_BATCH = 1000  # rows deleted per statement: pruning never holds a large result or lock
_DURATION = re.compile(r"(\d{1,9})\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class QueryError(ValueError):
    """A usage filter that cannot be understood; the message says which and why."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_time(raw: str, param: str, now: datetime | None = None) -> datetime:
    """A point in time (naive UTC): `7d`, `12h`, `30m` ago, or an ISO date or date-time."""
    now = now or utcnow()
    text = raw.strip()
    match = _DURATION.fullmatch(text)
    if match:
        try:
            return now - timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
        except OverflowError:
            raise QueryError(f"{param}: {raw!r} reaches before the year 1", param) from None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{param} must be a duration ago (7d, 12h, 30m) or an ISO date or date-time, "
                         f"got {raw!r}", param) from None
    if moment.tzinfo is not None:
        try:
            moment = (moment - moment.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]
        except OverflowError:
            raise QueryError(f"{param}: {raw!r} is out of range", param) from None
    return moment


@dataclass(frozen=True)
class UsageQuery:
    """What to summarise: a time range, a grouping, optionally one key."""

    since: datetime
    until: datetime
    by: str = "key"
    key: str | None = None

    @classmethod
    def parse(cls, *, since: str | None, until: str | None, by: str | None, key: str | None) -> UsageQuery:
        """The query from its textual filters (CLI options or query parameters); QueryError when one is bad."""
        now = utcnow()
        grouping = by or "key"
        if grouping not in GROUPINGS:
            raise QueryError(f"by must be one of {', '.join(GROUPINGS)}, got {grouping!r}", "by")
        start = parse_time(since or "7d", "since", now)
        end = parse_time(until, "until", now) if until else now
        if start > end:
            raise QueryError("since must be before until", "since")
        return cls(since=start, until=end, by=grouping, key=key or None)


def summarise(connection: Connection, query: UsageQuery) -> list[dict[str, Any]]:
    """One row per group: the group's value, requests, prompt, completion and total tokens."""
    group = _group_column(query.by)
    prompt = func.coalesce(func.sum(ledger.c.prompt_tokens), 0)
    completion = func.coalesce(func.sum(ledger.c.completion_tokens), 0)
    statement = (select(group.label("group"), func.count().label("requests"), prompt.label("prompt"),
                        completion.label("completion"))
                 .where(ledger.c.time >= query.since, ledger.c.time < query.until)
                 .group_by(group).order_by(group))
    if query.key is not None:
        statement = statement.where(ledger.c.key_name == query.key)
    return [{query.by: _group_value(row.group), "requests": int(row.requests),
             "prompt_tokens": int(row.prompt), "completion_tokens": int(row.completion),
             "total_tokens": int(row.prompt) + int(row.completion)}
            for row in connection.execute(statement)]


def _group_column(by: str) -> Any:
    if by == "key":
        return func.coalesce(ledger.c.key_name, "(none)")
    if by == "day":
        return func.date(ledger.c.time)  # SQLite and PostgreSQL both have date()
    return ledger.c[by]


def _group_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def tokens_since(connection: Connection, key_name: str, since: datetime) -> int:
    """Prompt plus completion tokens the ledger holds for `key_name` since `since` (a budget's period)."""
    total = func.coalesce(func.sum(ledger.c.prompt_tokens + ledger.c.completion_tokens), 0)
    statement = select(total).where(ledger.c.key_name == key_name, ledger.c.time >= since)
    return int(connection.execute(statement).scalar_one())


def prune(engine: Engine, before: datetime, batch: int = PRUNE_BATCH, max_batches: int = 100) -> int:
    """Delete rows older than `before`, `batch` rows per transaction; returns how many went."""
    removed = 0
    for _ in range(max_batches):
        with engine.begin() as connection:
            oldest = select(ledger.c.id).where(ledger.c.time < before).order_by(ledger.c.id).limit(batch)
            count = connection.execute(delete(ledger).where(ledger.c.id.in_(oldest))).rowcount
        removed += count
        if count < batch:
            break
    return removed
