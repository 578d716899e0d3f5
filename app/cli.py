"""The `sluice` command: one function per subcommand.

Two ways to add one. A single command: write `def name(args: argparse.Namespace) -> int`
whose docstring's first line is its help, and decorate it with
`@command("name", arguments=...)`, where `arguments` adds its options to its parser. A
group of commands in a module of its own: give the module `register(subparsers)`, which
adds parsers that `set_defaults(func=...)`, and list the module in REGISTRARS. Either way
`main` calls `args.func(args)` and exits with what it returns. Handlers import what they
need when they run, so that `sluice --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]

_COMMANDS: list[tuple[str, Handler, Arguments]] = []
# Modules whose register(subparsers) adds their own subcommands.
REGISTRARS = ("app.access.keys_cli", "app.ledger.usage_cli")


def command(name: str, arguments: Arguments = lambda parser: None) -> Callable[[Handler], Handler]:
    """Register a subcommand: its name, its handler (whose docstring is its help) and its options."""
    def register(handler: Handler) -> Handler:
        _COMMANDS.append((name, handler, arguments))
        return handler
    return register


def _load_settings() -> dict[str, Any]:
    """The settings from the environment; a bad value stops the command with the setting's name."""
    from app import config

    try:
        return config.load()
    except config.ConfigError as exc:
        raise SystemExit(f"sluice: configuration error: {exc}") from None


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine-args", default="", metavar="ARGS",
        help="extra command-line arguments for the embedded vLLM, quoted as one string, "
             "e.g. --engine-args='--max-num-seqs 4'")


@command("serve", arguments=_serve_arguments)
def serve(args: argparse.Namespace) -> int:
    """Run the gateway; without SLUICE_UPSTREAM_URL, also install and run a real vLLM behind it."""
    from app.engine.serve import serve as run_serve

    return run_serve(_load_settings(), shlex.split(args.engine_args))


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true",
                        help="print the table of every setting, as in docs/configuration.md")


@command("config", arguments=_config_arguments)
def show_config(args: argparse.Namespace) -> int:
    """Check the SLUICE_* settings and print each one's value (secrets masked)."""
    from app import config

    if args.markdown:
        print(config.markdown_table(), end="")
        return 0
    for name, value in _load_settings().items():
        secret = value and any(word in name for word in ("TOKEN", "API_KEY", "REDIS_URL", "DATABASE_URL"))
        print(f"{config.SETTINGS_BY_NAME[name].env_var}={'***' if secret else value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="sluice", description="Sluice: an API gateway in front of vLLM. Settings come from SLUICE_* "
                                   "environment variables (see docs/configuration.md).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, handler, arguments in _COMMANDS:
        doc = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else ""
        sub = subparsers.add_parser(name, help=doc, description=doc)
        arguments(sub)
        sub.set_defaults(func=handler)
    for module in REGISTRARS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sluice` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
