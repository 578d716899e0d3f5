"""Every setting of Sluice: one name, one default, one environment variable, one doc line.

This module imports nothing but the standard library, because gunicorn.conf.py loads it
in the gunicorn master, before gevent patches the standard library in each worker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

ENV_PREFIX = "SLUICE_"


class ConfigError(ValueError):
    """A setting has a value Sluice cannot use; the message names the setting."""


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


_PARSERS: dict[type, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    bool: _parse_bool,
}


@dataclass(frozen=True)
class Setting:
    """One setting: its name in app.config, its type, default, bounds and documentation."""

    name: str
    type: type
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name

    def coerce(self, value: Any) -> Any:
        """Turn a raw value (a string from the environment, or a Python value) into this type."""
        if isinstance(value, str) and self.type is not str:
            value = _PARSERS[self.type](value)
        elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"expected {self.type.__name__}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return value


MiB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    # --- serving (read by gunicorn.conf.py as well as by the app) ---
    Setting("BIND", str, "127.0.0.1:8080", "Address gunicorn listens on (host:port, comma-separated for several)."),
    Setting("WORKERS", int, 2, "Gunicorn gevent worker processes; one per core is a good start.", minimum=1),
    Setting("WORKER_CONNECTIONS", int, 1000,
            "Concurrent connections per worker; also the size of each worker's upstream connection pool.",
            minimum=1),
    Setting("KEEPALIVE", int, 75,
            "Seconds an idle client connection stays open; longer than nginx's upstream keepalive_timeout (60 s).",
            minimum=0),
    Setting("GRACEFUL_TIMEOUT", int, 300,
            "Seconds a worker has, on reload or stop, to finish the generations in flight.", minimum=1),
    Setting("LOG_LEVEL", str, "info", "Log level of the gateway and gunicorn.",
            choices=("debug", "info", "warning", "error", "critical")),
    # --- upstream ---
    Setting("UPSTREAM_URL", str, "",
            "Base URL of the vLLM (OpenAI-compatible) server, e.g. http://127.0.0.1:8000. "
            "Empty: `sluice serve` starts the embedded engine and sets it."),
    Setting("UPSTREAM_CONNECT_TIMEOUT", float, 3.0, "Seconds to open a connection to the upstream.", minimum=0.001),
    Setting("UPSTREAM_READ_TIMEOUT", float, 120.0,
            "Seconds the upstream may stay silent (before the response, or between two chunks) before a 504.",
            minimum=0.001),
    Setting("UPSTREAM_HEALTH_TIMEOUT", float, 2.0, "Seconds /readyz waits for the upstream's /health.",
            minimum=0.001),
    Setting("UPSTREAM_API_KEY", str, "", "Bearer token sent to the upstream, if it requires one."),
    Setting("MODEL", str, "",
            "Model requested when a native request names none. Empty: the upstream's first served model."),
    # --- request limits ---
    Setting("MAX_BODY_BYTES", int, 1 * MiB, "Largest request body accepted; larger gets 413.", minimum=1),
    Setting("MAX_PROMPT_CHARS", int, 32_000, "Longest prompt accepted, in characters; longer gets 422.", minimum=1),
    Setting("MAX_TOKENS_LIMIT", int, 4096, "Largest max_tokens a request may ask for; larger gets 422.", minimum=1),
    Setting("HEARTBEAT_INTERVAL", float, 15.0,
            "Seconds between SSE comment lines sent while a stream waits for the upstream, so that "
            "idle-timeout proxies keep it open. 0 turns them off.", minimum=0),
    # --- client connections ---
    Setting("CLIENT_BODY_TIMEOUT", float, 30.0,
            "Seconds a client has to send its whole request body; slower gets 408 and the connection is "
            "closed, so a client trickling bytes cannot hold a connection slot forever.", minimum=0.001),
    # --- the embedded engine (`sluice serve` without SLUICE_UPSTREAM_URL) ---
    Setting("ENGINE_HOME", str, "",
            "Folder for the engine's virtual environment and converted model. Empty: ~/.cache/sluice."),
    Setting("ENGINE_MODEL_DIR", str, "",
            "Hugging Face model folder the engine serves. Empty: SmolLM2-135M-Instruct, fetched and "
            "converted once into ENGINE_HOME."),
    Setting("ENGINE_SERVED_MODEL_NAME", str, "smollm2", "Model name the engine serves under."),
    Setting("ENGINE_DTYPE", str, "float32",
            "Weights' dtype. float32 because bfloat16 gives garbage on CPUs without AVX-512 BF16.",
            choices=("float32", "bfloat16", "float16", "auto")),
    Setting("ENGINE_MAX_MODEL_LEN", int, 2048, "Context length (prompt plus completion) in tokens.", minimum=16),
    Setting("ENGINE_KVCACHE_GIB", int, 2, "GiB of memory for the engine's KV cache (VLLM_CPU_KVCACHE_SPACE).",
            minimum=1),
    Setting("ENGINE_PORT", int, 8100, "Loopback port of the embedded engine.", minimum=1, maximum=65535),
    Setting("ENGINE_START_TIMEOUT", float, 900.0, "Seconds to wait for the engine's /health after a start.",
            minimum=1),
    Setting("ENGINE_MAX_RESTARTS", int, 5, "Restarts of a dead engine before `sluice serve` gives up.", minimum=0),
    Setting("ENGINE_STATE_FILE", str, "",
            "JSON file where the engine supervisor records the engine's state; /readyz reports it. "
            "Set by `sluice serve`."),
)

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
            raw, source = environ[setting.env_var], f"environment variable {setting.env_var}={environ[setting.env_var]!r}"
        else:
            raw, source = setting.default, f"default of {setting.name}"
        try:
            resolved[setting.name] = setting.coerce(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return resolved


def markdown_table() -> str:
    """The settings as the table in docs/configuration.md (kept in sync by a test)."""
    lines = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default != "" else "(empty)"
        lines.append(f"| `{s.env_var}` | {default} | {s.doc} |")
    return "\n".join(lines) + "\n"
