"""The database's tables (SQLAlchemy Core): API keys, the key store's version, the usage ledger.

Times are naive UTC (`datetime.now(UTC).replace(tzinfo=None)`): SQLite has no time zones and
PostgreSQL's `date()` of a naive timestamp is the same day everywhere, so `--by day` agrees
across both. Migrations (app/ledger/migrations) create these tables; keep both in step.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, false

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
RowId = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys", metadata,
    Column("name", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_concurrent", Integer),
    Column("weight", Integer, nullable=False, server_default="1"),  # share of scarce replica capacity
    Column("priority", String(8), nullable=False, server_default="normal"),  # its class: high, normal, low
    Column("budget_tokens", BigInteger),  # prompt + completion tokens per budget period; None: no budget
    Column("budget_period", String(8)),  # "day" or "month" (UTC)
    Column("admin", Boolean, nullable=False, server_default=false()),
    Column("revoked", Boolean, nullable=False, server_default=false()),
    Column("created", DateTime, nullable=False),
    Column("updated", DateTime, nullable=False),
)

# One row, bumped in the same transaction as every change to api_keys: workers poll it to
# learn, within a second, that their cached key records are stale (a counter, not a time:
# hosts' clocks differ).
key_store_version = Table(
    "key_store_version", metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
)

ledger = Table(
    "ledger", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("time", DateTime, nullable=False),  # when the generation was admitted or refused (UTC)
    Column("request_id", String(128), nullable=False),
    Column("key_name", String(64)),  # None: a gateway without keys
    Column("route", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("replica", String(256)),
    Column("stream", Boolean, nullable=False),
    Column("outcome", String(32), nullable=False),  # completed, cancelled, upstream_error, refused
    Column("error_code", String(64)),  # which limit refused it, or which upstream error ended it
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("usage_reported", Boolean, nullable=False),  # False: counted from the relayed stream
    Column("ttft_ms", Float),
    Column("duration_ms", Float, nullable=False),
)
Index("ix_ledger_time", ledger.c.time)
Index("ix_ledger_key_time", ledger.c.key_name, ledger.c.time)


def utcnow() -> datetime:
    """Now, as the tables store times: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)
