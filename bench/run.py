"""Run the benchmarks and publish them: `python -m bench.run` (what `make bench` does).

Steps, each recorded in OUT/results.json and rendered into docs/benchmarks.md:
  suite    every design (bench/designs.py) against the simulator, in interleaved rounds:
           blocking concurrency sweep, concurrent streams, capacity, cancellation;
  profile  where Sluice's worker spends its time under blocking and streaming load (py-spy);
  vllm     vLLM's own benchmark client through Sluice and directly against the embedded vLLM.
`--short` runs a tiny suite for CI (figures produced, no speed judged) into a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import designs, loadgen, machine, plots, report
from bench.designs import Design
from bench.features import Features, switch_on
from bench.loadgen import CANCEL_CASES, Watch
from bench.processes import ROOT, Simulator
from bench.simulator import raise_fd_limit

DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "docs" / "benchmarks"
RESULTS = "results.json"
SIM_COMMON = ("--max-num-seqs", "4096")  # no queueing in the upstream: only the proxy is measured
SIMULATORS = {  # the upstream each phase runs against
    "blocking": ("--itl", "0"),
    "streams": ("--itl", "0.02"),
    # Tokens 200 ms apart: a stream (64 tokens, 12.8 s) outlasts the time a worker takes to open
    # 2,000, so they are all open at once when memory peaks (StreamsResult.open_together), and
    # the load side keeps up (10,000 events/s instead of 100,000).
    "capacity": ("--itl", "0.2"),
    "cancel": ("--ttft", "0.5", "--itl", "0.02"),  # a first token late enough to leave before it
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    rounds: int
    concurrency: tuple[int, ...]
    warmup: float  # seconds of load before each blocking measurement
    duration: float  # seconds each blocking measurement lasts
    streams: int  # concurrent streams for the comparison of every design
    capacity: int  # concurrent streams for the capacity test
    capacity_designs: tuple[str, ...]
    cancel_trials: int  # per design, case and round
    designs: tuple[str, ...]
    blocking_tokens: int = 16
    stream_tokens: int = 64
    stream_timeout: float = 120.0


FULL = Plan(rounds=3, concurrency=(1, 8, 64), warmup=1.0, duration=4.0, streams=500, capacity=2000,
            capacity_designs=("direct", "nginx", "sluice-1w"), cancel_trials=3,
            designs=tuple(d.name for d in designs.ALL))
SHORT = Plan(rounds=1, concurrency=(1, 8), warmup=0.2, duration=0.4, streams=10, capacity=20,
             capacity_designs=("direct", "sluice-1w"), cancel_trials=1,
             designs=("direct", "nginx", "seed-flask", "floor-wsgi", "floor-flask", "sluice-1w"), stream_timeout=30.0)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def row(round_: int, design: Design, api: str, result: Any, **extra: Any) -> dict[str, Any]:
    """One measurement as a flat record; a figure that could not be measured (NaN) is null."""
    record = {"round": round_, "design": design.name, "api": api, **dataclasses.asdict(result), **extra}
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in record.items()}


@dataclasses.dataclass
class Runner:
    """One run of the suite: what to run, where, with which Sluice features and upstreams; the rows measured."""

    plan: Plan
    workdir: Path
    features: Features
    sims: dict[str, Simulator]
    rows: dict[str, list[dict[str, Any]]] = dataclasses.field(
        default_factory=lambda: {"blocking": [], "streams": [], "cancel": []})

    def start(self, design: Design, phase: str) -> designs.Running:
        """The design's proxies, started afresh in front of the phase's simulator."""
        return designs.start(design, self.sims[phase], self.workdir, self.features)

    def watch(self, running: designs.Running, phase: str) -> Watch:
        return Watch(running.target_pids, [os.getpid(), self.sims[phase].proc.pid])

    async def blocking(self, design: Design, round_: int) -> None:
        """The concurrency sweep."""
        plan = self.plan
        with self.start(design, "blocking") as running:
            for concurrency in plan.concurrency:
                result = await loadgen.blocking(running.endpoint, concurrency, plan.blocking_tokens, plan.warmup,
                                                plan.duration, self.watch(running, "blocking"))
                log(f"  {design.name} blocking c={concurrency}: {result.rps:,.0f} req/s, p50 {result.p50 * 1e3:.2f}"
                    f" ms, p99 {result.p99 * 1e3:.2f} ms, errors {result.errors}")
                self.rows["blocking"].append(row(round_, design, running.endpoint.api.name, result, rps=result.rps))

    async def streams(self, design: Design, round_: int) -> None:
        """The capacity test, then N streams, each on a freshly started proxy.

        The capacity test follows one stream (memory per stream from a clean start); the N streams
        follow a first burst of N, so that every design is measured warm, as a gateway runs (its
        pools filled), and their memory per stream is not reported.
        """
        plan = self.plan
        counts = ([("capacity", plan.capacity)] if design.name in plan.capacity_designs else []) + \
                 [("streams", plan.streams)]
        for kind, count in counts:
            with self.start(design, kind) as running:
                watch = self.watch(running, kind)
                warm_up = 1 if kind == "capacity" else count
                await loadgen.streams(running.endpoint, warm_up, plan.stream_tokens, plan.stream_timeout, watch)
                result = await loadgen.streams(running.endpoint, count, plan.stream_tokens, plan.stream_timeout, watch)
            log(f"  {design.name} {count} streams: {result.completed} completed, TTFT p50 "
                f"{result.ttft_p50 * 1e3:.0f} ms, gap p50 {result.gap_p50 * 1e3:.1f} ms, "
                f"{result.rss_per_stream / 1024:.1f} KiB/stream (all open at once: {result.open_together}), "
                f"errors {result.errors or 0}")
            self.rows["streams"].append(row(round_, design, running.endpoint.api.name, result, kind=kind,
                                            rss_per_stream=result.rss_per_stream if kind == "capacity" else None))

    async def cancel(self, design: Design, round_: int) -> None:
        """Cancellation trials, each case several times."""
        if design.relay_app:
            return  # the small relays watch for no departed client: nothing to time
        sim = self.sims["cancel"]
        seen = []
        with self.start(design, "cancel") as running:
            for case in CANCEL_CASES:
                for _ in range(self.plan.cancel_trials):
                    seconds = await loadgen.cancel_trial(running.endpoint, "127.0.0.1", sim.port, case)
                    self.rows["cancel"].append({"round": round_, "design": design.name, "case": case,
                                                "seconds": seconds})
                    seen.append("never" if seconds is None else f"{seconds * 1e3:.0f} ms")
        log(f"  {design.name} cancellation: {', '.join(seen)}")


async def suite(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Every design in every round (the order rotated each round), each phase on freshly started proxies."""
    with ExitStack() as stack:
        features = switch_on(workdir, dict(os.environ))
        stack.callback(features.stop)
        sims = {}
        for phase, args in SIMULATORS.items():
            sims[phase] = Simulator(*args, *SIM_COMMON, log=workdir / f"simulator-{phase}.log")
            stack.callback(sims[phase].stop)
        runner = Runner(plan, workdir, features, sims)
        chosen = [designs.BY_NAME[name] for name in plan.designs]
        for round_ in range(plan.rounds):
            for design in chosen[round_ % len(chosen):] + chosen[:round_ % len(chosen)]:
                log(f"round {round_ + 1}/{plan.rounds}: {design.label}")
                await runner.blocking(design, round_)
                await runner.streams(design, round_)
                await runner.cancel(design, round_)
    return {"plan": dataclasses.asdict(plan), "features": features.on, **runner.rows}


def load_results(out: Path) -> dict[str, Any]:
    """The results recorded so far in OUT (a step run alone updates its own part only)."""
    path = out / RESULTS
    return json.loads(path.read_text()) if path.exists() else {}


def save(out: Path, results: dict[str, Any], doc: Path | None) -> None:
    """Write results.json, the plots and the rendered tables (and splice them into `doc`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).write_text(json.dumps(results, indent=1) + "\n")
    images = plots.write(results, out)
    rendered = report.render(results, images, relative_to=doc.parent if doc else out)
    (out / "results.md").write_text(rendered)
    if doc is not None:
        report.splice(doc, rendered)
    log(f"results in {out}" + (f", published in {doc}" if doc else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--short", action="store_true", help="tiny suite for CI, into a temporary folder")
    steps.add_argument("--vllm", action="store_true", help="only the vLLM step")
    steps.add_argument("--profile", action="store_true", help="only the profiling step")
    steps.add_argument("--skip-vllm", action="store_true", help="the suite and the profile, not the vLLM step")
    steps.add_argument("--render", action="store_true", help="measure nothing: redraw the plots and tables from "
                                                             "OUT/results.json (after a change to bench/report.py)")
    parser.add_argument("--rounds", type=int, help="rounds of the suite (default 3; 1 with --short)")
    parser.add_argument("--designs", help="comma-separated designs of the suite (default all: "
                                          + ",".join(d.name for d in designs.ALL) + "); with --out while iterating")
    parser.add_argument("--out", type=Path, help=f"results folder (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--note", default="", help="said at the top of the published figures (e.g. the machine "
                                                   "was shared)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs 2 CPUs (one for the proxy under test, one for the load and the upstream)")
    # This process is the load generator: on LOAD_CPU, as is everything it starts unless re-pinned.
    os.sched_setaffinity(0, {designs.LOAD_CPU})
    raise_fd_limit()
    plan = SHORT if args.short else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    if args.designs:
        chosen = tuple(args.designs.split(","))
        unknown = set(chosen) - set(designs.BY_NAME)
        if unknown:
            sys.exit(f"bench: unknown designs {sorted(unknown)}; known: {', '.join(designs.BY_NAME)}")
        plan = dataclasses.replace(plan, designs=chosen)
    out = args.out or (Path(tempfile.mkdtemp(prefix="sluice-bench-")) if args.short else OUT)
    doc = None if args.short or args.out else DOC
    run_suite = not (args.vllm or args.profile or args.render)
    run_profile = not (args.vllm or args.short or args.render)
    run_vllm = not (args.profile or args.short or args.skip_vllm or args.render)
    results = load_results(out) if not args.short else {}
    if not args.render:
        results["machine"] = machine.describe()
    command = shlex.join(["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="sluice-bench-work-") as scratch:
        workdir = Path(scratch)
        # Saved after each step: a step that fails later loses only its own figures.
        if run_suite:
            record = machine.started(command, args.note)
            results["suite"] = {**loadgen.run(suite(plan, workdir)), "run": machine.finished(record)}
            save(out, results, doc)
        if run_profile:
            from bench import profile
            record = machine.started(command, args.note)
            results["profile"] = {**profile.run(workdir, out), "run": machine.finished(record)}
            save(out, results, doc)
        if run_vllm:
            from bench import vllm_bench
            record = machine.started(command, args.note)
            results["vllm"] = {**vllm_bench.run(workdir), "run": machine.finished(record)}
            save(out, results, doc)
    if args.render:
        save(out, results, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
