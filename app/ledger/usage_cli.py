"""`sluice usage` (the ledger summarised) and `sluice db upgrade` (migrations), for app/cli.py's REGISTRARS."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app import config
from app.ledger.queries import GROUPINGS, QueryError, UsageQuery
from app.ledger.tables import utcnow

COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `usage` and `db` to the `sluice` command's subparsers."""
    usage = subparsers.add_parser("usage", help="requests and tokens from the usage ledger",
                                  description="Summarise the usage ledger (times are UTC).")
    usage.add_argument("--since", default="7d", help="start: a duration ago (7d, 12h, 30m) or an ISO date or "
                                                     "date-time (default: 7d)")
    usage.add_argument("--until", help="end (exclusive), same forms (default: now)")
    usage.add_argument("--by", choices=GROUPINGS, default="key", help="grouping (default: key)")
    usage.add_argument("--key", metavar="NAME", help="only this key's usage")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table", dest="output")
    usage.set_defaults(func=show_usage)

    db = subparsers.add_parser("db", help="the database's schema", description="Database migrations (Alembic).")
    commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    commands.add_parser("upgrade", help="bring the schema to the latest migration (workers also do it at start)"
                        ).set_defaults(func=upgrade_db)


def show_usage(args: argparse.Namespace) -> int:
    """Print the summary as a table, JSON (a list of objects) or CSV."""
    from app.ledger import connect
    from app.ledger.queries import summarise

    try:
        query = UsageQuery.parse(since=args.since, until=args.until, by=args.by, key=args.key)
        engine = connect(config.load())
        with engine.connect() as connection:
            rows = summarise(connection, query)
    except (QueryError, config.ConfigError) as exc:
        print(f"sluice usage: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, QueryError) else 1
    except SQLAlchemyError as exc:
        print(f"sluice usage: the database did not answer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    write(rows, query, args.output)
    return 0


def write(rows: list[dict[str, Any]], query: UsageQuery, output: str) -> None:
    """Rows to stdout in `output` format."""
    header = (query.by, *COLUMNS)
    if output == "json":
        print(json.dumps(rows, indent=2))
    elif output == "csv":
        out = csv.DictWriter(sys.stdout, fieldnames=header, lineterminator="\n")
        out.writeheader()
        out.writerows(rows)
    else:
        print(f"usage from {query.since:%Y-%m-%d %H:%M} to {query.until:%Y-%m-%d %H:%M} UTC, by {query.by}"
              + (f", key {query.key}" if query.key else ""))
        total = {query.by: "TOTAL", **{c: sum(int(r[c]) for r in rows) for c in COLUMNS}}
        table = [[h.upper() for h in header]] + [[str(r[h]) for h in header] for r in [*rows, total]]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
            print("  ".join(cells))


def upgrade_db(args: argparse.Namespace) -> int:
    """Run the migrations on SLUICE_DATABASE_URL (or the default SQLite file)."""
    from app.ledger import connect
    from app.ledger.database import DatabaseError

    try:
        engine = connect(config.load())
    except (config.ConfigError, DatabaseError, SQLAlchemyError) as exc:
        print(f"sluice db: {exc}", file=sys.stderr)
        return 1
    print(f"database {engine.url.render_as_string(hide_password=True)} is at the latest schema "
          f"({utcnow():%Y-%m-%d %H:%M} UTC)", file=sys.stderr)
    return 0
