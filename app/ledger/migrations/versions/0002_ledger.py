"""The usage ledger: one row per generation that reached admission.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("time", sa.DateTime, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(64)),
        sa.Column("route", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("replica", sa.String(256)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("usage_reported", sa.Boolean, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("duration_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_ledger_time", "ledger", ["time"])
    op.create_index("ix_ledger_key_time", "ledger", ["key_name", "time"])


def downgrade() -> None:
    op.drop_table("ledger")
