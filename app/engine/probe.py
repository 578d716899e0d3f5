"""Checks run with the engine's python: `probe.py pins REQUIREMENTS` and `probe.py imports`.

Run by path, not imported by the gateway: `imports` loads vLLM, which the gateway's
environment does not have. Exit status 0 means the check passed; otherwise the
problems are printed, one a line.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys

_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def unmet_pins(requirements: str) -> list[str]:
    """The lines of a requirements file (name==version only) that the environment does not satisfy."""
    unmet = []
    for raw in requirements.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if match is None:
            # Only exact pins can be checked without pip; anything else means "run pip".
            unmet.append(f"{line}: not an exact pin")
            continue
        name, wanted = match.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{name}: not installed")
            continue
        if installed != wanted:
            unmet.append(f"{name}: {installed} installed, {wanted} wanted")
    return unmet


def import_problems() -> list[str]:
    """Import what the engine runs and what the conversion needs; the errors, if any."""
    problems = []
    # The server module pulls transformers' image utilities, which import torchvision when
    # it is installed: that is where "operator torchvision::nms does not exist" shows.
    for module in ("vllm.entrypoints.openai.api_server", "transformers", "gguf", "accelerate"):
        try:
            __import__(module)
        except Exception as exc:  # any failure makes the environment unusable
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    return problems


def main(argv: list[str]) -> int:
    """Run the check named by argv[1]."""
    if len(argv) == 3 and argv[1] == "pins":
        with open(argv[2], encoding="utf-8") as handle:
            problems = unmet_pins(handle.read())
    elif len(argv) == 2 and argv[1] == "imports":
        problems = import_problems()
    else:
        print("usage: probe.py pins REQUIREMENTS | probe.py imports", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
