"""The gateway as `sluice serve` runs it: gunicorn from the project root, in its own process group."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.engine import children
from app.engine.layout import PROJECT_ROOT
from app.engine.net_probes import port_is_free, wait_until_answers
from app.engine.report import EngineError

LISTEN_TIMEOUT = 60.0


def gunicorn_command(python: str | Path | None = None) -> list[str]:
    """`<venv>/bin/gunicorn -c gunicorn.conf.py`: the gunicorn installed beside this python."""
    # Not resolved: a virtualenv's python is a symlink, and its scripts sit beside the link.
    gunicorn = Path(python or sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        raise EngineError(f"gunicorn is not installed beside {python or sys.executable}: "
                          "install the gateway's requirements (pip install -r requirements.txt) in that environment")
    return [str(gunicorn), "-c", "gunicorn.conf.py"]


def local_url(bind: str) -> str:
    """The URL a person on this machine uses for the first BIND address (0.0.0.0 and :: mean loopback)."""
    first = bind.split(",")[0].strip()
    if first.startswith("unix:"):
        return first
    host, _, port = first.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def curl_example(url: str, with_key: bool = False) -> str:
    """A request to the native API that works as printed (with a key in $SLUICE_API_KEY when keys are on)."""
    body = '{"prompt": "The capital of France is", "max_tokens": 32}'
    auth = ' -H "Authorization: Bearer $SLUICE_API_KEY"' if with_key else ""
    if url.startswith("unix:"):
        return (f"curl -s --unix-socket {url[5:]} http://localhost/v1/generate{auth} "
                f"-H 'Content-Type: application/json' -d '{body}'")
    return f"curl -s {url}/v1/generate{auth} -H 'Content-Type: application/json' -d '{body}'"


class Gateway:
    """gunicorn started from the folder that holds gunicorn.conf.py (which names wsgi:app)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.url = local_url(settings["BIND"])
        # gunicorn lets workers finish their requests for GRACEFUL_TIMEOUT after a TERM.
        self.grace = float(settings["GRACEFUL_TIMEOUT"]) + 10.0
        self.child: subprocess.Popen[bytes] | None = None

    def check_address(self) -> None:
        """Fail now, not after a minute of engine start-up, when the first BIND address is taken."""
        if self.url.startswith("http://"):
            host, _, port = self.url[len("http://"):].rpartition(":")
            if not port_is_free(host.strip("[]"), int(port)):
                raise EngineError(f"{self.url} is already in use (another Sluice running?): stop it, "
                                  "or set SLUICE_BIND to a free address")

    def start(self, extra_env: Mapping[str, str] | None = None) -> None:
        """Start gunicorn with our environment plus extra_env; its output goes to ours."""
        self.child = children.spawn(gunicorn_command(), env={**os.environ, **(extra_env or {})}, cwd=PROJECT_ROOT)

    def alive(self) -> bool:
        """True while the gunicorn master runs."""
        return self.child is not None and self.child.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.child.returncode if self.child is not None else None

    def wait_listening(self) -> float:
        """Wait until the gateway's /healthz answers; returns the seconds it took."""
        if self.url.startswith("unix:"):
            return 0.0
        return wait_until_answers(
            f"{self.url}/healthz", "the gateway", LISTEN_TIMEOUT, self.alive,
            died=lambda: EngineError(f"the gateway (gunicorn) exited with code {self.returncode} while starting: "
                                     "its messages are above"))

    def stop(self) -> None:
        """Stop gunicorn: TERM (workers finish their requests), then KILL after the grace period."""
        if self.child is not None:
            children.stop(self.child, "the gateway", self.grace)
