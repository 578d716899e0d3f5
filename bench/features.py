"""Which of Sluice's optional features the benchmark switches on, as a user would run it.

A user runs Sluice with API keys, limits and metrics on; the figures are only honest if
the benchmark does too. Each feature is switched on when this build of Sluice has it
(its setting exists in app/config/table.py, or its module exists) and recorded either way, so
the report says what was measured. The settings and the `sluice keys create` command
used here are the ones the access-control and metrics work names.
"""
from __future__ import annotations

import importlib.util
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from app import config
from bench.processes import ROOT, Service, free_port, wait_until

# Limits generous enough never to refuse the benchmark's own load: measured, never hit.
KEY_LIMITS = ("--rpm", "1000000000", "--tpm", "1000000000000", "--max-concurrent", "100000")


@dataclass
class Features:
    """The settings and headers that switch features on, what was switched on, and services started for them."""

    settings: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    on: dict[str, str] = field(default_factory=dict)  # feature -> how it was switched on, or why not
    services: list[Service] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """Processes started for the features (Redis): part of the system under test."""
        return [service.proc.pid for service in self.services]

    def stop(self) -> None:
        for service in self.services:
            service.stop()


class Redis(Service):
    """A private redis-server on a free loopback port, nothing persisted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        super().__init__("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                         log=workdir / "redis.log")
        wait_until(self._ping, 10, "redis", self.proc)

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")


def _has_setting(name: str) -> bool:
    return name in config.SETTINGS_BY_NAME


def _create_key(env: dict[str, str]) -> str:
    """Create a key with `sluice keys create` and return it (the command prints it once, last)."""
    argv = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
            "keys", "create", "--name", "bench", *KEY_LIMITS]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    words = done.stdout.split()
    if done.returncode != 0 or not words:
        raise RuntimeError(f"`sluice keys create` failed (exit {done.returncode}): {done.stderr.strip()}\n"
                           f"command: {shlex.join(argv)}; bench/features.py must follow its interface")
    return words[-1]


def switch_on(workdir: Path, base_env: dict[str, str]) -> Features:
    """Switch on every feature this build has; the caller stops the returned services."""
    features = Features()
    if _has_setting("REDIS_URL"):
        redis = Redis(workdir)
        features.services.append(redis)
        features.settings["SLUICE_REDIS_URL"] = redis.url
        features.on["shared limits (Redis)"] = f"SLUICE_REDIS_URL={redis.url}"
    else:
        features.on["shared limits (Redis)"] = "not in this build"
    if _has_setting("KEYS_FILE"):
        keys_file = workdir / "keys"
        features.settings["SLUICE_KEYS_FILE"] = str(keys_file)
        key = _create_key({**base_env, **features.settings})
        features.headers["Authorization"] = f"Bearer {key}"
        features.on["API keys, per-key limits"] = f"SLUICE_KEYS_FILE, one key ({' '.join(KEY_LIMITS)})"
    else:
        features.on["API keys, per-key limits"] = "not in this build"
    if importlib.util.find_spec("app.observe.metrics") is not None:
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        features.settings["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        features.on["Prometheus metrics"] = "PROMETHEUS_MULTIPROC_DIR set (multiprocess mode)"
    else:
        features.on["Prometheus metrics"] = "not in this build"
    features.on["request IDs, validation, disconnect watcher, access log"] = "always on"
    return features
