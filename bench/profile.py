"""Where one Sluice worker spends its CPU: py-spy samples under blocking and streaming load.

The worker (one gevent worker, pinned like in the suite) is sampled while the load runs;
each function's share of the samples times the worker's CPU per request (or per relayed
token) gives its cost in microseconds per request (or per token). The standard library's
time is charged to the package that called it (json called by the translator counts as
Sluice's, logging called by gunicorn's access log as gunicorn's).
"""
from __future__ import annotations

import asyncio
import gzip
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import designs, loadgen
from bench.features import switch_on
from bench.loadgen import Watch
from bench.processes import Simulator
from bench.sampler import tree

RATE = 200  # samples per second: enough for a stable ranking, little slowing of the worker
SECONDS = 8
TOP = 25
SPINE = 0.5  # frames in more than this share of samples are the server's call chain, not one cost
# py-spy names frames "function (path:line)", the path relative to site-packages.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::\d+)?\)$")
GROUPS = {  # top-level module -> the group its time is reported under
    "app": "Sluice (app/)", "flask": "Flask + Werkzeug", "werkzeug": "Flask + Werkzeug",
    "flask_smorest": "flask-smorest + webargs + marshmallow", "webargs": "flask-smorest + webargs + marshmallow",
    "marshmallow": "flask-smorest + webargs + marshmallow", "apispec": "flask-smorest + webargs + marshmallow",
    "requests": "requests + urllib3 (upstream client)", "urllib3": "requests + urllib3 (upstream client)",
    "gunicorn": "gunicorn", "gevent": "gevent", "greenlet": "gevent", "blinker": "blinker (signals)",
    "flask_limiter": "Flask-Limiter + limits + redis", "limits": "Flask-Limiter + limits + redis",
    "redis": "Flask-Limiter + limits + redis", "prometheus_client": "prometheus-client",
}
STDLIB = "standard library, called from outside the packages above"
# Stacks that are not work: gevent's resolver threads waiting for a job (py-spy does not
# see them as idle, yet they use no CPU), and the hub waiting in the event loop.
_NOT_WORK = ("gevent/threadpool.py",)
_IDLE_LEAF = "Hub.run (gevent/hub.py"


def _group(frame: str) -> str | None:
    """The group of a frame's code, or None for the standard library."""
    match = _FRAME.match(frame)
    top = (match.group("path") if match else frame).split("/", 1)[0]
    return GROUPS.get(top)


def _without_line(frame: str) -> str:
    """'f (pkg/mod.py:12)' -> 'f (pkg/mod.py)': one row per function, whichever line was running."""
    match = _FRAME.match(frame)
    return f"{match.group('function')} ({match.group('path')})" if match else frame


def aggregate(collapsed: str, us_per_unit: float) -> dict[str, Any]:
    """Self time by group, and the costliest functions (inclusive), from py-spy's raw (collapsed) output."""
    by_group: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        if frames[-1].startswith(_IDLE_LEAF) or any(marker in stack for marker in _NOT_WORK):
            continue
        total += n
        owner = next((g for g in map(_group, reversed(frames)) if g is not None), STDLIB)
        by_group[owner] += n
        for function in {_without_line(frame) for frame in frames}:
            inclusive[function] += n
    if not total:
        return {"samples": 0, "by_package": [], "top_inclusive": []}

    def rows(counter: Counter[str], keep: Any) -> list[tuple[str, float, float]]:
        return [(name, n / total, n / total * us_per_unit) for name, n in counter.most_common() if keep(n / total)]

    return {"samples": total, "by_package": rows(by_group, lambda share: share >= 0.005),
            "top_inclusive": rows(inclusive, lambda share: share < SPINE)[:TOP]}


def _record(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", str(RATE), "--duration", str(seconds),
                             "--format", "raw", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _blocking_load(running: designs.Running, watch: Watch, until: subprocess.Popen[bytes]) -> tuple[str, float]:
    result = await loadgen.blocking(running.endpoint, 64, 16, 0.5, SECONDS + 1.5, watch)
    return f"blocking, 64 concurrent clients, {result.rps:,.0f} req/s while sampled", result.cpu_us_per_request


async def _streams_load(running: designs.Running, watch: Watch, until: subprocess.Popen[bytes]) -> tuple[str, float]:
    costs, count = [], 500
    while until.poll() is None:
        result = await loadgen.streams(running.endpoint, count, 64, 120.0, watch)
        costs.append(result.cpu_us_per_event)
    return f"{count} concurrent streams of 64 tokens, repeated", sum(costs) / len(costs)


SCENARIOS = {"blocking": ("request", ("--itl", "0"), _blocking_load),
             "streams": ("token", ("--itl", "0.02"), _streams_load)}


def run(workdir: Path, out: Path) -> dict[str, Any]:
    """Profile the 1-worker design under each scenario; the collapsed stacks go to OUT/profile-*.txt.gz
    (flamegraph.pl and speedscope read them unzipped)."""
    results: dict[str, Any] = {"rate": RATE, "seconds": SECONDS, "scenarios": {}}
    # Its own folder: the suite's keys file (same work folder) already holds the key it named.
    workdir = workdir / "profile"
    workdir.mkdir(exist_ok=True)
    features = switch_on(workdir, dict(os.environ))
    try:
        for name, (unit, sim_args, load) in SCENARIOS.items():
            sim = Simulator(*sim_args, "--max-num-seqs", "4096", log=workdir / f"profile-{name}-sim.log")
            try:
                with designs.start(designs.SLUICE_1, sim, workdir, features) as running:
                    worker = tree(running.services[0].proc.pid)[-1].pid
                    output = workdir / f"profile-{name}.txt"
                    loadgen.run(loadgen.streams(running.endpoint, 1, 64, 30.0, Watch([], [])))  # warm-up
                    description, us_per_unit = loadgen.run(_profile(running, worker, output, load))
                    collapsed = output.read_text() if output.exists() else ""
                    out.mkdir(parents=True, exist_ok=True)
                    with gzip.open(out / f"profile-{name}.txt.gz", "wt") as kept:
                        kept.write(collapsed)
                    scenario = aggregate(collapsed, us_per_unit)
                    results["scenarios"][name] = {"unit": unit, "load": description,
                                                  "cpu_us_per_unit": us_per_unit, **scenario}
                    print(f"[bench] profile {name}: {us_per_unit:.0f} µs per {unit}, {scenario['samples']} samples",
                          flush=True)
            finally:
                sim.stop()
    finally:
        features.stop()
    return results


async def _profile(running: designs.Running, worker: int, output: Path, load: Any) -> tuple[str, float]:
    watch = Watch(running.target_pids, [os.getpid()])
    recorder = _record(worker, SECONDS, output)
    try:
        return await load(running, watch, recorder)
    finally:
        while recorder.poll() is None:
            await asyncio.sleep(0.1)
        if recorder.returncode != 0:
            error = recorder.stderr.read().decode(errors="replace").strip() if recorder.stderr else ""
            print(f"[bench] py-spy failed ({recorder.returncode}): {error}", flush=True)
