"""One setting: its name, type, default, bounds and documentation, and how a raw value becomes it.

Standard library only (see app/config/__init__.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


_PARSERS: dict[type, Callable[[str], Any]] = {str: str, int: int, float: float, bool: _parse_bool}


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
            try:
                value = _PARSERS[self.type](value)
            except ValueError:
                raise ValueError(f"expected {self.type.__name__}, got {value!r}") from None
        elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"expected {self.type.__name__}")
        if self.minimum is not None and value < self.minimum:  # type: ignore[operator]  # int or float here
            raise ValueError(f"must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:  # type: ignore[operator]  # int or float here
            raise ValueError(f"must be at most {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return value
