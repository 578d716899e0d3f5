"""What the figures were measured on and when: machine, versions, commit, load before and after."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Any

from bench.processes import ROOT

PACKAGES = ("flask", "werkzeug", "gunicorn", "gevent", "greenlet", "requests", "urllib3", "flask-smorest",
            "marshmallow", "flask-limiter", "prometheus-client", "uvloop", "psutil")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return (done.stdout + done.stderr).strip() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, Any]:
    """The machine and the software measured."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(pages / 2**30),
        "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "nginx": _output(["nginx", "-v"]).removeprefix("nginx version: nginx/"),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _commit() -> str:
    commit = _output(["git", "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "status", "--porcelain", "--untracked-files=no"])
    return commit + ("+uncommitted changes" if dirty not in ("", "unknown") else "")


def started(command: str, note: str) -> dict[str, Any]:
    """The record of one step: when, which command, which commit, how busy the machine was."""
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": command, "note": note, "commit": _commit(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()], "_t0": time.monotonic()}


def finished(record: dict[str, Any]) -> dict[str, Any]:
    """The same record, completed with the load afterwards and the duration."""
    done = dict(record)
    done["seconds"] = round(time.monotonic() - done.pop("_t0"))
    done["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return done
