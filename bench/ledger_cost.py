"""The usage ledger's cost: gateway CPU per request with SLUICE_LEDGER on and off, rounds alternated.

One gevent worker in front of the simulator, SQLite ledger (the default), blocking
completions at fixed concurrency; CPU of the gateway's processes per answered request.

    python -m bench.ledger_cost [--rounds 3] [--duration 8] [--concurrency 16] [--out FILE.json]
    (make ledger-cost: into docs/usage/ledger-cost.json)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench.loadgen import COMPLETIONS, Endpoint, Watch, blocking, run
from bench.processes import Gateway, Simulator


def measure(simulator: Simulator, ledger: bool, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """One round: CPU µs per request and requests per second."""
    gateway = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_LEDGER": str(ledger).lower(),
                       "SLUICE_DATABASE_URL": f"sqlite:///{folder / 'ledger.db'}"},
                      log=folder / f"gateway-{ledger}.log")
    try:
        endpoint = Endpoint("127.0.0.1", gateway.port, COMPLETIONS)
        result = run(blocking(endpoint, args.concurrency, 16, 1.0, args.duration,
                              Watch([gateway.proc.pid], [os.getpid(), simulator.proc.pid])))
    finally:
        gateway.stop()
    return {"cpu_us_per_request": result.cpu_us_per_request, "rps": result.rps, "errors": result.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sluice-ledger-cost-"))
    simulator = Simulator(log=folder / "simulator.log")
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        for _ in range(args.rounds):
            for state in ("off", "on"):
                results[state].append(measure(simulator, state == "on", folder, args))
    finally:
        simulator.stop()
    summary = {state: {"cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in rounds),
                       "rps": statistics.median(r["rps"] for r in rounds), "rounds": rounds}
               for state, rounds in results.items()}
    summary["cpu_increase"] = summary["on"]["cpu_us_per_request"] / summary["off"]["cpu_us_per_request"] - 1
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
