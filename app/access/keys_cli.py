"""`sluice keys create|list|update|revoke|import`: manage API keys in the configured stores.

app/cli.py adds these with `keys_cli.register(subparsers)`; each subcommand sets
`func(args) -> int` (the exit status). Keys go to SLUICE_KEYS_FILE when it is set (a single
host), else to the database (SLUICE_DATABASE_URL, or SQLite in the instance folder), which
every host sharing it sees. `import` moves keys from the file and from Redis (where earlier
versions kept them) into the database.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import redis

from app import config
from app.access.key_store import BUDGET_PERIODS, MAX_WEIGHT, PRIORITIES
from app.access.keys import LIMIT_FIELDS, KeyRing, KeyStoreError
from app.access.shared_state import connect


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys` and its subcommands to the `sluice` command's subparsers."""
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys",
                                 description="Manage API keys (stored as SHA-256 hashes only).")
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = commands.add_parser("create", help="make a key and print it, the only time it is shown")
    create.add_argument("--name", required=True, help="who the key is for (letters, digits, . _ -)")
    create.add_argument("--rpm", type=_limit, help="requests per minute (default: SLUICE_DEFAULT_RPM; 0: none)")
    create.add_argument("--tpm", type=_limit,
                        help="tokens per SLUICE_TOKEN_WINDOW seconds (default: SLUICE_DEFAULT_TPM; 0: none)")
    create.add_argument("--max-concurrent", type=_limit,
                        help="generations in flight at once (default: SLUICE_DEFAULT_MAX_CONCURRENT; 0: none)")
    create.add_argument("--weight", type=_weight, default=1,
                        help=f"share of replica capacity when it is scarce, relative to other keys (1 to {MAX_WEIGHT})")
    create.add_argument("--priority", choices=PRIORITIES, default="normal",
                        help="class when replica capacity is scarce: a higher class is always admitted first")
    _budget_options(create)
    create.add_argument("--admin", action="store_true", help="may read everyone's usage (GET /v1/usage)")
    create.set_defaults(func=create_key)

    change = commands.add_parser("update", help="change an existing key's limits, budget or admin right")
    change.add_argument("name")
    for option in ("--rpm", "--tpm", "--max-concurrent"):
        change.add_argument(option, type=_limit, help="new value (0: none)")
    change.add_argument("--weight", type=_weight, help=f"new share of scarce replica capacity (1 to {MAX_WEIGHT})")
    change.add_argument("--priority", choices=PRIORITIES, help="new class when replica capacity is scarce")
    _budget_options(change)
    change.add_argument("--no-budget", action="store_true", help="remove the key's budget")
    change.add_argument("--admin", action=argparse.BooleanOptionalAction, help="grant or withdraw the admin right")
    change.set_defaults(func=update_key)

    commands.add_parser("import", help="move the keys of SLUICE_KEYS_FILE and of Redis into the database, once"
                        ).set_defaults(func=import_keys)

    commands.add_parser("list", help="list keys (names and limits; never the keys)").set_defaults(func=list_keys)

    revoke = commands.add_parser("revoke", help="refuse a key from its next request on")
    revoke.add_argument("name")
    revoke.set_defaults(func=revoke_key)


def create_key(args: argparse.Namespace) -> int:
    """Print a new key on stdout (alone, for scripts); what was done on stderr."""
    def create(ring: KeyRing) -> int:
        key, record = ring.create(args.name, rpm=args.rpm, tpm=args.tpm, max_concurrent=args.max_concurrent,
                                  weight=args.weight, priority=args.priority, admin=args.admin, **_budget(args))
        print(key)
        print(f"created key {record.name!r} in {ring.home.kind}; store it now, it is not shown again",
              file=sys.stderr)
        return 0
    return _with_ring(create)


def list_keys(args: argparse.Namespace) -> int:
    """A table of every key: name, store, limits, state."""
    def show(ring: KeyRing) -> int:
        rows: list[tuple[str, ...]] = [("NAME", "STORE", "RPM", "TPM", "MAX_CONCURRENT", "WEIGHT", "PRIORITY", "STATE",
                                        "CREATED", "BUDGET", "ADMIN")]
        for kind, record in ring.records():
            limits = tuple("default" if getattr(record, f) is None else str(getattr(record, f)) for f in LIMIT_FIELDS)
            budget = "none" if record.budget_tokens is None else f"{record.budget_tokens}/{record.budget_period}"
            rows.append((record.name, kind, *limits, str(record.weight), record.priority,
                         "revoked" if record.revoked else "active", record.created, budget,
                         "yes" if record.admin else "no"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0
    return _with_ring(show)


def revoke_key(args: argparse.Namespace) -> int:
    """Revoke a key by name, in every store that holds it."""
    def revoke(ring: KeyRing) -> int:
        if not ring.revoke(args.name):
            print(f"sluice keys: no key named {args.name!r}", file=sys.stderr)
            return 1
        print(f"revoked key {args.name!r}: refused from its next request on", file=sys.stderr)
        return 0
    return _with_ring(revoke)


def update_key(args: argparse.Namespace) -> int:
    """Change the fields given on the command line; the others stay."""
    fields = (*LIMIT_FIELDS, "weight", "priority", "admin")
    changes = {field: getattr(args, field) for field in fields if getattr(args, field) is not None}
    changes.update(_budget(args))
    if args.no_budget:
        changes.update(budget_tokens=None, budget_period=None)
    if not changes:
        print("sluice keys update: nothing to change (see --help)", file=sys.stderr)
        return 2

    def change(ring: KeyRing) -> int:
        record = ring.update(args.name, **changes)
        if record is None:
            print(f"sluice keys: no key named {args.name!r} in the keys file or the database", file=sys.stderr)
            return 1
        print(f"updated key {record.name!r}: {', '.join(f'{k}={v}' for k, v in changes.items())}", file=sys.stderr)
        return 0
    return _with_ring(change)


def import_keys(args: argparse.Namespace) -> int:
    """Copy the keys file's and Redis's keys into the database (then removed from Redis)."""
    from app.ledger.keystore import DatabaseKeyStore
    from app.ledger.keystore import import_keys as move

    def run(ring: KeyRing) -> int:
        assert isinstance(ring.database, DatabaseKeyStore)
        names = move(ring.database, ring.file, ring.redis)
        print(f"imported {len(names)} key(s) into the database" + (f": {', '.join(names)}" if names else ""),
              file=sys.stderr)
        return 0
    return _with_ring(run)


def _with_ring(action: Callable[[KeyRing], int]) -> int:
    """Run `action` on the configured key stores; errors as one line on stderr and status 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.ledger import connect as connect_database
    from app.ledger.database import DatabaseError
    from app.ledger.keystore import DatabaseKeyStore

    try:
        settings = config.load()
        client = connect(settings["REDIS_URL"], settings["REDIS_TIMEOUT"]) if settings["REDIS_URL"] else None
        database = DatabaseKeyStore(connect_database(settings), publisher=client)
        return action(KeyRing.from_settings(settings, client, database))
    except (config.ConfigError, KeyStoreError, DatabaseError) as exc:
        print(f"sluice keys: {exc}", file=sys.stderr)
    except redis.RedisError as exc:
        print(f"sluice keys: Redis at SLUICE_REDIS_URL did not answer: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        print(f"sluice keys: the database did not answer: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def _budget_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget-tokens", type=_limit, metavar="N",
                        help="total tokens (prompt + completion) the key may use per budget period")
    parser.add_argument("--budget-period", choices=BUDGET_PERIODS, help="day or month (UTC; default: month)")


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """budget_tokens and budget_period as given (a period alone changes the period of the current budget)."""
    budget: dict[str, Any] = {}
    if args.budget_tokens is not None:
        budget.update(budget_tokens=args.budget_tokens, budget_period=args.budget_period or "month")
    elif args.budget_period is not None:
        budget["budget_period"] = args.budget_period
    return budget


def _weight(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_WEIGHT}, got {raw!r}")
    return value


def _limit(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {raw!r}")
    return value
