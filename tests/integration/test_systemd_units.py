"""The systemd units and environment file in deploy/systemd/ are valid, and agree with the settings."""
from __future__ import annotations

import re
import subprocess
import sys

from app import config
from bench.processes import BIN, ROOT

UNITS = ROOT / "deploy" / "systemd"


def read_env_file(text: str) -> dict[str, str]:
    """KEY=value lines of a systemd EnvironmentFile (whole-line comments only)."""
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_units_pass_systemd_analyze_verify(tmp_path):
    # Installed paths point into this checkout and environment, so the commands can be checked.
    moves = {"/opt/sluice-engine/bin/python": sys.executable, "/opt/sluice/.venv/bin": str(BIN),
             "/opt/sluice": str(ROOT)}
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        for installed, here in moves.items():
            text = text.replace(installed, here)
        paths.append(tmp_path / unit.name)
        paths[-1].write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_example_environment_holds_valid_settings():
    env = read_env_file((UNITS / "sluice.env").read_text())
    assert all(key.startswith(config.ENV_PREFIX) for key in env)
    assert {key.removeprefix(config.ENV_PREFIX) for key in env} <= set(config.SETTINGS_BY_NAME)
    settings = config.load(environ=env)
    assert settings["TRUSTED_PROXIES"] == 1, "nginx/sluice.conf is the one proxy in front"
    # systemd must not kill the workers before gunicorn's own graceful timeout has passed.
    stop_timeout = re.search(r"^TimeoutStopSec=(\d+)$", (UNITS / "sluice-gateway.service").read_text(), re.M)
    assert stop_timeout and int(stop_timeout.group(1)) > settings["GRACEFUL_TIMEOUT"]
