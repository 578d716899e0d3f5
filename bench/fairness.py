"""Fair sharing of replica capacity, measured: FIFO beside the fair queue, in the same run.

    python -m bench.fairness [--service 0.2] [--seconds 10] [--out docs/benchmarks]    (or `make fairness`)

One simulator replica (bench/simulator.py) answers every request after a fixed service
time; two gateways (real gunicorn, 2 gevent workers each, one Redis) hold it to
SLUICE_REPLICA_CAPACITY=4, one with SLUICE_QUEUE_POLICY=fifo and one with fair. Clients
are closed loops: each sends its next request when the last one is answered. Scenarios:

- alone: the light key's one loop, nothing else: its latency alone;
- flood: a key with 32 loops beside the light key's one: the light key's median latency;
- weights: keys of weight 3 and 1, 16 loops each: their shares of the completions;
- equal: four keys of weight 1, 8 loops each: Jain's fairness index of their completions;
- priority: two low-priority keys of 16 loops each and a high-priority key's one loop: its
  median wait (latency less the latency alone).

Prints a Markdown table, writes OUT/fairness.json and the plot OUT/fairness.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.access.keys import FileKeyStore, KeyRing
from bench.httpclient import Connection, build_request
from bench.processes import ROOT, Gateway, Redis, Simulator

CAPACITY = 4
POLICIES = ("fifo", "fair")
WARMUP = 2.0  # seconds of each scenario left out of its figures: the queue fills meanwhile
KEYS: dict[str, dict[str, Any]] = {
    "heavy": {}, "light": {}, "w3": {"weight": 3}, "w1": {}, "eq1": {}, "eq2": {}, "eq3": {}, "eq4": {},
    "high": {"priority": "high"}, "low1": {"priority": "low"}, "low2": {"priority": "low"},
}
SCENARIOS: dict[str, list[tuple[str, int]]] = {  # key -> closed loops
    "alone": [("light", 1)],
    "flood": [("heavy", 32), ("light", 1)],
    "weights": [("w3", 16), ("w1", 16)],
    "equal": [("eq1", 8), ("eq2", 8), ("eq3", 8), ("eq4", 8)],
    "priority": [("low1", 16), ("low2", 16), ("high", 1)],
}
Record = tuple[str, float, float, int]  # key, start (s from the scenario's start), latency (s), status


async def loop(port: int, key: str, secret: str, t0: float, stop_at: float, records: list[Record]) -> None:
    """One closed-loop client: a request, its answer, the next, until `stop_at`."""
    request = build_request("POST", "127.0.0.1", port, "/v1/completions",
                            {"model": "sim-model", "prompt": f"a request of {key}", "max_tokens": 1},
                            {"Authorization": f"Bearer {secret}"})
    connection = Connection("127.0.0.1", port)
    try:
        while (began := time.perf_counter()) < stop_at:
            status, _ = await connection.roundtrip(request)
            records.append((key, began - t0, time.perf_counter() - began, status))
    finally:
        connection.close()


async def scenario(port: int, secrets: dict[str, str], loops: list[tuple[str, int]], seconds: float) -> list[Record]:
    t0 = time.perf_counter()
    records: list[Record] = []
    await asyncio.gather(*(loop(port, key, secrets[key], t0, t0 + seconds, records)
                           for key, count in loops for _ in range(count)))
    return records


def figures(records: list[Record], seconds: float) -> dict[str, dict[str, float]]:
    """Per key: requests answered within the window (after the warm-up), median latency of those sent in it."""
    out = {}
    for key in sorted({r[0] for r in records}):
        mine = [r for r in records if r[0] == key and r[3] == 200]
        sent = [r[2] for r in mine if WARMUP <= r[1] < seconds]
        out[key] = {"done": sum(1 for r in mine if WARMUP <= r[1] + r[2] <= seconds),
                    "median": statistics.median(sent) if sent else float("nan"),
                    "errors": sum(1 for r in records if r[0] == key and r[3] != 200)}
    return out


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def summary(results: dict[str, Any], service: float) -> dict[str, dict[str, float]]:
    """The four figures the issue asks for, per policy."""
    out = {}
    for policy in POLICIES:
        by = results[policy]
        alone = by["alone"]["light"]["median"]
        weights = by["weights"]
        out[policy] = {
            "light_alone_s": alone,
            "light_under_flood_s": by["flood"]["light"]["median"],
            "light_slowdown": by["flood"]["light"]["median"] / alone,
            "weight_ratio": weights["w3"]["done"] / max(1, weights["w1"]["done"]),
            "jain_equal": jain([by["equal"][k]["done"] for k in ("eq1", "eq2", "eq3", "eq4")]),
            "high_wait_s": by["priority"]["high"]["median"] - alone,
            "high_wait_in_services": (by["priority"]["high"]["median"] - alone) / service,
            "errors": sum(f["errors"] for s in by.values() for f in s.values()),
        }
    return out


def table(summ: dict[str, dict[str, float]]) -> str:
    rows = [("light key's median latency under a 32-loop flood / alone (target <= 2)", "light_slowdown", "{:.2f}x"),
            ("weights 3:1, ratio of completions (target 2.7 to 3.3)", "weight_ratio", "{:.2f}"),
            ("four equal keys, Jain's index (target >= 0.95)", "jain_equal", "{:.3f}"),
            ("high-priority key's median wait, in service times (target <= 1)", "high_wait_in_services", "{:.2f}"),
            ("errors (any status but 200)", "errors", "{:.0f}")]
    lines = ["| figure | FIFO | fair |", "|---|---|---|"]
    lines += [f"| {label} | {fmt.format(summ['fifo'][k])} | {fmt.format(summ['fair'][k])} |" for label, k, fmt in rows]
    return "\n".join(lines)


def plot(raw: dict[str, dict[str, list[Record]]], path: Path) -> None:
    """Latency of each request against the time it was sent, per key: flood and priority, both policies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"heavy": "0.7", "low1": "0.7", "low2": "0.55", "light": "tab:red", "high": "tab:red"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    for col, policy in enumerate(POLICIES):
        for row, name in enumerate(("flood", "priority")):
            ax = axes[row][col]
            for key in sorted({r[0] for r in raw[policy][name]}, key=lambda k: k in ("light", "high")):
                points = [(r[1], r[2]) for r in raw[policy][name] if r[0] == key]
                ax.scatter([p[0] for p in points], [p[1] for p in points], s=6 if key in ("light", "high") else 2,
                           color=colours[key], label=key)
            ax.set_title(f"{name}: {policy.upper() if policy == 'fifo' else 'fair queue'}")
            ax.set_xlabel("sent at (s)")
            ax.set_ylabel("latency (s)")
            ax.legend(loc="upper right", markerscale=3)
    fig.suptitle(f"Replica capacity {CAPACITY}: latency per key over time, FIFO beside fair")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--service", type=float, default=0.2, help="seconds the simulator takes per request")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each scenario")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="sluice-fairness-"))
    ring = KeyRing(FileKeyStore(logs / "keys.json"), None)
    secrets = {name: ring.create(name, **share)[0] for name, share in KEYS.items()}
    redis = Redis(log=logs / "redis.log")
    simulator = Simulator("--ttft", str(args.service), log=logs / "simulator.log")
    gateways: dict[str, Gateway] = {}
    raw: dict[str, dict[str, list[Record]]] = {}
    try:
        for db, policy in enumerate(POLICIES, start=1):  # a Redis database each: their counts stay apart
            gateways[policy] = Gateway({
                "SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2", "SLUICE_KEYS_FILE": str(ring.file.path),
                "SLUICE_REDIS_URL": f"{redis.url[:-2]}/{db}", "SLUICE_REPLICA_CAPACITY": str(CAPACITY),
                "SLUICE_QUEUE_POLICY": policy, "SLUICE_LOG_LEVEL": "warning"}, log=logs / f"gateway-{policy}.log")
        for name, loops in SCENARIOS.items():
            for policy in POLICIES:
                seconds = min(args.seconds, 5.0) if name == "alone" else args.seconds
                print(f"{name} ({policy}): {seconds:g} s", flush=True)
                raw.setdefault(policy, {})[name] = asyncio.run(
                    scenario(gateways[policy].port, secrets, loops, seconds))
    finally:
        for gateway in gateways.values():
            gateway.stop()
        simulator.stop()
        redis.stop()
    results: dict[str, Any] = {
        policy: {name: figures(records, min(args.seconds, 5.0) if name == "alone" else args.seconds)
                 for name, records in raw[policy].items()} for policy in POLICIES}
    summ = summary(results, args.service)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fairness.json").write_text(json.dumps(
        {"command": " ".join(["python -m bench.fairness", *(sys.argv[1:] if argv is None else argv)]),
         "commit": commit.strip(),
         "service_s": args.service, "capacity": CAPACITY, "workers": 2, "summary": summ, "per_key": results},
        indent=1) + "\n")
    plot(raw, args.out / "fairness.png")
    print(table(summ))
    print(f"results in {args.out / 'fairness.json'}, plot in {args.out / 'fairness.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
