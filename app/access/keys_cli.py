"""`sluice keys create|list|revoke`: manage API keys in the configured stores.

app/cli.py adds these with `keys_cli.register(subparsers)`; each subcommand sets
`func(args) -> int` (the exit status). Keys go to Redis when SLUICE_REDIS_URL is set
(every host sees them), else to SLUICE_KEYS_FILE.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import redis

from app import config
from app.access.keys import LIMIT_FIELDS, MAX_WEIGHT, PRIORITIES, KeyRing, KeyStoreError
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
    create.set_defaults(func=create_key)

    commands.add_parser("list", help="list keys (names and limits; never the keys)").set_defaults(func=list_keys)

    revoke = commands.add_parser("revoke", help="refuse a key from its next request on")
    revoke.add_argument("name")
    revoke.set_defaults(func=revoke_key)


def create_key(args: argparse.Namespace) -> int:
    """Print a new key on stdout (alone, for scripts); what was done on stderr."""
    def create(ring: KeyRing) -> int:
        key, record = ring.create(args.name, rpm=args.rpm, tpm=args.tpm, max_concurrent=args.max_concurrent,
                                  weight=args.weight, priority=args.priority)
        print(key)
        print(f"created key {record.name!r} in {ring.stores[-1].kind}; store it now, it is not shown again",
              file=sys.stderr)
        return 0
    return _with_ring(create)


def list_keys(args: argparse.Namespace) -> int:
    """A table of every key: name, store, limits, state."""
    def show(ring: KeyRing) -> int:
        rows: list[tuple[str, ...]] = [
            ("NAME", "STORE", "RPM", "TPM", "MAX_CONCURRENT", "WEIGHT", "PRIORITY", "STATE", "CREATED")]
        for kind, record in ring.records():
            limits = tuple("default" if getattr(record, f) is None else str(getattr(record, f)) for f in LIMIT_FIELDS)
            rows.append((record.name, kind, *limits, str(record.weight), record.priority,
                         "revoked" if record.revoked else "active", record.created))
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


def _with_ring(action: Callable[[KeyRing], int]) -> int:
    """Run `action` on the configured key stores; errors as one line on stderr and status 1."""
    try:
        settings = config.load()
        client = connect(settings["REDIS_URL"], settings["REDIS_TIMEOUT"]) if settings["REDIS_URL"] else None
        return action(KeyRing.from_settings(settings, client))
    except (config.ConfigError, KeyStoreError) as exc:
        print(f"sluice keys: {exc}", file=sys.stderr)
    except redis.RedisError as exc:
        print(f"sluice keys: Redis at SLUICE_REDIS_URL did not answer: {exc}", file=sys.stderr)
    return 1


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
