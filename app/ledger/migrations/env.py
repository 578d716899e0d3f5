"""Alembic's environment: migrations run on the connection app/ledger/migrate.py hands over."""
from __future__ import annotations

from alembic import context

from app.ledger.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through app.ledger.migrate.upgrade (`sluice db upgrade`), "
                       "which passes the connection")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
