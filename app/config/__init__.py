"""Every setting of Sluice: one name, one default, one environment variable, one doc line.

This package imports nothing but the standard library (and only relatively, within itself),
because gunicorn.conf.py loads it by path in the gunicorn master, before gevent patches the
standard library in each worker. `setting` defines a setting, `table` lists them all; here
they are resolved from the environment and checked.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from .setting import ENV_PREFIX, ConfigError, Setting
from .table import SETTINGS, MiB

__all__ = ["ENV_PREFIX", "SETTINGS", "SETTINGS_BY_NAME", "ConfigError", "MiB", "Setting", "authentication_required",
           "exposed_binds", "is_loopback_bind", "load", "markdown_table"]

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Resolve every setting: its default, then the environment, then explicit overrides."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SETTINGS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    resolved: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            raw, source = overrides[setting.name], f"setting {setting.name}"
        elif setting.env_var in environ:
            raw = environ[setting.env_var]
            source = f"environment variable {setting.env_var}={raw!r}"
        else:
            raw, source = setting.default, f"default of {setting.name}"
        try:
            resolved[setting.name] = setting.coerce(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    _refuse_open_exposure(resolved)
    return resolved


def authentication_required(settings: Mapping[str, Any]) -> bool:
    """True when a key store is configured: then every API request needs a key."""
    return bool(settings["KEYS_FILE"] or settings["REDIS_URL"])


def is_loopback_bind(address: str) -> bool:
    """True when a gunicorn bind address (host:port, [v6]:port, unix:path) only accepts local clients."""
    address = address.strip()
    if address.startswith("unix:"):
        return True
    if address.startswith("["):
        host = address[1:address.find("]")]
    elif address.count(":") == 1:
        host = address.split(":")[0]
    else:
        host = address  # a bare host (gunicorn's default port) or a bare IPv6 address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # Empty (every interface), fd://, or a host name: nothing proves it stays local.
        return False


def exposed_binds(settings: Mapping[str, Any]) -> list[str]:
    """The bind addresses that accept clients from other machines."""
    return [a.strip() for a in settings["BIND"].split(",") if not is_loopback_bind(a)]


def _refuse_open_exposure(settings: Mapping[str, Any]) -> None:
    # Checked here, where gunicorn.conf.py and create_app both load the settings, so neither can
    # start a gateway that anyone on the network could use without a key.
    exposed = exposed_binds(settings)
    if exposed and not authentication_required(settings) and not settings["ALLOW_UNAUTHENTICATED"]:
        raise ConfigError(
            f"{ENV_PREFIX}BIND={settings['BIND']!r} accepts clients from other machines ({', '.join(exposed)}) "
            f"but no API keys are configured ({ENV_PREFIX}KEYS_FILE or {ENV_PREFIX}REDIS_URL): refusing to "
            f"serve without authentication. Configure keys, bind 127.0.0.1, or set "
            f"{ENV_PREFIX}ALLOW_UNAUTHENTICATED=true.")


def markdown_table() -> str:
    """The settings as the table in docs/configuration.md (kept in sync by a test)."""
    lines = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default != "" else "(empty)"
        lines.append(f"| `{s.env_var}` | {default} | {s.doc} |")
    return "\n".join(lines) + "\n"
