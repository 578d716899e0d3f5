"""Where the embedded engine keeps its files: one place that names every path."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The folder holding wsgi.py, gunicorn.conf.py and requirements-engine.txt: app/engine/../..
PROJECT_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS_FILE = PROJECT_ROOT / "requirements-engine.txt"
# Scripts run by path with the engine's python (they import torch, vllm: not the gateway's packages).
ENGINE_SCRIPTS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class EngineLayout:
    """The folders under ENGINE_HOME: the engine's virtualenv, converted models, logs, run state."""

    home: Path

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EngineLayout:
        """ENGINE_HOME, or ~/.cache/sluice when it is empty."""
        raw = settings["ENGINE_HOME"]
        return cls(Path(raw).expanduser() if raw else Path.home() / ".cache" / "sluice")

    @property
    def venv(self) -> Path:
        return self.home / "engine" / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.venv / "sluice-requirements.sha256"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def downloads(self) -> Path:
        return self.home / "downloads"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    def state_file(self, configured: str, port: int) -> Path:
        """ENGINE_STATE_FILE, or run/engine-<port>.json (one per engine port, so two serves never share one)."""
        return Path(configured).expanduser() if configured else self.run / f"engine-{port}.json"

    def log_file(self, name: str) -> Path:
        """A log file under logs/, its folder created."""
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / name
