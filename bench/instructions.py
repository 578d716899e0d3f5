"""Instructions per request, counted by callgrind: what each feature costs, the same on a noisy machine.

CPU time on this machine swings by ±30 % from one minute to the next (docs/benchmarks.md),
too much to see a feature that costs 5 %. callgrind counts the instructions the process
executes instead, which does not depend on what else runs. Each variant calls the WSGI
app in-process (no gunicorn, no client socket: those are the same for every variant) with
blocking 16-token completions against the simulator; its instructions per request are the
difference between a run of W + N and one of W requests, divided by N, so that start-up
and imports cancel out. The simulator and Redis run in their own processes, uncounted.
Kernel time (the syscalls of each socket operation) is not counted either: the figures
rank user-space work, they are not microseconds.

    python -m bench.instructions [--requests 200] [--variants sluice,floor-flask,...] [--out FILE.json]
    (make instructions: into docs/benchmarks/instructions.json; needs valgrind)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.loadgen import COMPLETIONS
from bench.processes import ROOT

WARMUP = 50
# name -> (WSGI app: "sluice" or module:attribute, settings changed from the user's set-up; None: unset)
VARIANTS: dict[str, tuple[str, dict[str, str | None]]] = {
    "sluice": ("sluice", {}),
    "sluice/logs-at-warning": ("sluice", {"SLUICE_LOG_LEVEL": "warning"}),
    "sluice/metrics-in-process": ("sluice", {"PROMETHEUS_MULTIPROC_DIR": None}),
    "sluice/ledger-off": ("sluice", {"SLUICE_LEDGER": "false"}),
    "sluice/limits-in-memory": ("sluice", {"SLUICE_REDIS_URL": None}),
    "floor-flask": ("bench.floor.app:app", {}),
    "seed-flask": ("bench.seed.app:app", {}),
}


def child(variant: str, requests: int) -> None:
    """In the counted process: start the upstream (and Redis), build the app, send WARMUP + `requests`."""
    from gevent import monkey

    monkey.patch_all()  # as in a gevent worker, before anything imports socket
    from bench.features import switch_on
    from bench.processes import Simulator

    target, changes = VARIANTS[variant]
    work = Path(tempfile.mkdtemp(prefix="sluice-instructions-"))
    simulator = Simulator("--itl", "0", "--max-num-seqs", "4096", log=work / "simulator.log")
    features = switch_on(work, dict(os.environ)) if target == "sluice" else None
    try:
        headers: dict[str, str] = {}
        if features is not None:
            # Health checks run every second in the background: under callgrind, some 50 times slower,
            # a second is a few requests, and the checks would count as a tenth of each request.
            os.environ.update({**features.settings, "SLUICE_UPSTREAM_URL": simulator.url,
                               "SLUICE_DATABASE_URL": f"sqlite:///{work / 'sluice.db'}",
                               "SLUICE_HEALTH_INTERVAL": "3600"})
            for name, value in changes.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            from app import create_app

            app, headers = create_app(), features.headers
        else:
            os.environ["VLLM_URL"] = simulator.url
            module, attribute = target.split(":")
            app = getattr(__import__(module, fromlist=[attribute]), attribute)
        send = _sender(app, headers)
        statuses = [send() for _ in range(requests)]
        if set(statuses) != {"200 OK"}:
            sys.exit(f"{variant}: statuses {sorted(set(statuses))}")
    finally:
        simulator.stop()
        if features is not None:
            features.stop()


def _sender(app: Callable[..., Iterable[bytes]], headers: dict[str, str]) -> Callable[[], str]:
    """One blocking request through `app` as gunicorn would call it; returns the status line."""
    body = json.dumps(COMPLETIONS.body(16, stream=False)).encode()  # the suite's blocking request
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": COMPLETIONS.path, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
               "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": False,
               "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
               **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}}
    status: list[str] = []

    def start_response(line: str, response_headers: Any, exc_info: Any = None) -> None:
        status.append(line)

    def send() -> str:
        answer = app({**environ, "wsgi.input": io.BytesIO(body)}, start_response)
        try:
            for _ in answer:
                pass
        finally:
            getattr(answer, "close", lambda: None)()
        return status[-1]

    return send


def count(variant: str, requests: int, folder: Path) -> int:
    """Instructions of one counted run of WARMUP + `requests` requests (the whole process)."""
    out = folder / f"callgrind-{re.sub(r'[^a-z]+', '-', variant)}-{requests}.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
               "bench.instructions", "--child", variant, "--requests", str(requests)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: exit {done.returncode}\n{done.stderr[-2000:]}")
    totals = re.search(r"^totals:\s+(\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"{variant}: no totals in {out}")
    return int(totals.group(1))


def per_request(variant: str, requests: int, folder: Path) -> float:
    return (count(variant, WARMUP + requests, folder) - count(variant, WARMUP, folder)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="counted requests after the warm-up")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the counted process itself
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench.instructions needs valgrind (apt-get install valgrind)")
    chosen = args.variants.split(",")
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    folder = Path(tempfile.mkdtemp(prefix="sluice-instructions-"))
    figures = {variant: per_request(variant, args.requests, folder) for variant in chosen}
    base = figures.get("sluice")
    for variant, instructions in figures.items():
        against = f"  ({instructions / base:.2f}× sluice)" if base else ""
        print(f"{instructions / 1e6:6.2f} M instructions per request  {variant}{against}")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        record = {"command": " ".join(["python -m bench.instructions", *sys.argv[1:]]), "commit": commit,
                  "requests": args.requests, "warmup": WARMUP, "instructions_per_request": figures}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
