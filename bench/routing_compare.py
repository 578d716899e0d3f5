"""Compare routing strategies on simulated replicas: where requests go, and how long they take.

    python -m bench.routing_compare [--requests 300] [--concurrency 24]

Two scenarios, each run once per strategy against a fresh gateway (real gunicorn, one
gevent worker) in front of three simulator replicas:

- slow replica: two fast replicas and one three times slower with a small batch (a
  smaller GPU, or one shared with another tenant);
- busy replica: three equal replicas, one of them also serving another gateway's
  long requests, which only its /metrics reveals.

Prints a Markdown table per scenario (docs/scaling.md quotes them).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.processes import Gateway, Simulator
from bench.sse_client import stream

STRATEGIES = ("round_robin", "least_outstanding", "load_aware")
MAX_TOKENS = 32
FAST = ("--itl", "0.01")
SLOW = ("--itl", "0.03", "--max-num-seqs", "4")
BUSY = ("--itl", "0.01", "--max-num-seqs", "20")
BACKGROUND_STREAMS = 16  # the other gateway's long requests on the busy replica: 4 of its 20 slots left


def run(strategy: str, replicas: list[Simulator], total: int, concurrency: int, logs: Path) -> dict:
    """Send `total` streaming requests through a fresh gateway; per-replica counts and latencies."""
    gateway = Gateway({"SLUICE_UPSTREAM_URL": ",".join(r.url for r in replicas), "SLUICE_MODEL": "",
                       "SLUICE_ROUTING_STRATEGY": strategy, "SLUICE_HEALTH_INTERVAL": "0.5"},
                      log=logs / f"gateway-{strategy}.log")
    try:
        before = [r.stats()["requests_total"] for r in replicas]
        started = time.monotonic()

        def one(i: int) -> float:
            result = stream(gateway.url + "/v1/generate/stream", {"prompt": f"request {i}", "max_tokens": MAX_TOKENS})
            assert result.status == 200 and result.done, result.events[-2:]
            return result.times[-1]

        with ThreadPoolExecutor(max_workers=concurrency) as clients:
            latencies = sorted(clients.map(one, range(total)))
        wall = time.monotonic() - started
        counts = [r.stats()["requests_total"] - b for r, b in zip(replicas, before, strict=True)]
    finally:
        gateway.stop()
    return {"strategy": strategy, "counts": counts, "wall": wall, "mean": statistics.fmean(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))]}


def table(title: str, rows: list[dict], marked: int) -> str:
    """One scenario as Markdown; `marked` is the index of the slow or busy replica."""
    lines = [title, "", "| strategy | requests per replica | to the marked replica | mean latency | "
             "p95 latency | wall time |", "|---|---|---|---|---|---|"]
    for row in rows:
        counts = row["counts"]
        shown = " / ".join(f"**{c}**" if i == marked else str(c) for i, c in enumerate(counts))
        lines.append(f"| {row['strategy']} | {shown} | {100 * counts[marked] / sum(counts):.0f} % | "
                     f"{row['mean']:.2f} s | {row['p95']:.2f} s | {row['wall']:.1f} s |")
    return "\n".join(lines) + "\n"


def scenario_slow(total: int, concurrency: int, logs: Path) -> str:
    replicas = [Simulator(*FAST, log=logs / "fast-0.log"), Simulator(*FAST, log=logs / "fast-1.log"),
                Simulator(*SLOW, log=logs / "slow.log")]
    try:
        rows = [run(s, replicas, total, concurrency, logs) for s in STRATEGIES]
    finally:
        for replica in replicas:
            replica.stop()
    return table("**Slow replica**: fast, fast, **slow** (30 ms per token instead of 10, 4 sequences at a time)",
                 rows, 2)


def scenario_busy(total: int, concurrency: int, logs: Path) -> str:
    replicas = [Simulator(*BUSY, log=logs / f"equal-{i}.log") for i in range(3)]
    busy = replicas[2]
    # Another gateway's work on the third replica: long streams for the whole run.
    background = [requests.post(busy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 100_000,
                                                                    "stream": True}, stream=True, timeout=600)
                  for _ in range(BACKGROUND_STREAMS)]
    try:
        rows = [run(s, replicas, total, concurrency, logs) for s in STRATEGIES]
    finally:
        for reply in background:
            reply.close()
        for replica in replicas:
            replica.stop()
    return table(f"**Busy replica**: three equal replicas (20 sequences at a time), the **third** also running "
                 f"{BACKGROUND_STREAMS} streams of another gateway", rows, 2)


def main(argv: list[str] | None = None) -> None:
    """Run both scenarios and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="streaming requests per strategy")
    parser.add_argument("--concurrency", type=int, default=24, help="clients sending at once")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluice-routing-") as folder:
        logs = Path(folder)
        print(f"{args.requests} streams of {MAX_TOKENS} tokens per strategy, {args.concurrency} at a time\n")
        print(scenario_slow(args.requests, args.concurrency, logs))
        print(scenario_busy(args.requests, args.concurrency, logs))


if __name__ == "__main__":
    main()
