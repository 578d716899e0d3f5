"""docs/usage.md's example: a real run through the gateway, then `sluice usage` and a plot of tokens per key per day.

Three keys send requests through real gunicorn (2 workers) to the simulator, in three rounds.
A run takes a minute, not three days: after each round its rows are moved back by whole days
(the only change made to the ledger), so that the report and the plot show three days.

    python -m bench.usage_report [--out docs/usage]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import matplotlib
import requests
import sqlalchemy as sa

from app.access.keys import KeyRing
from app.ledger import connect
from app.ledger.keystore import DatabaseKeyStore
from app.ledger.tables import ledger
from bench.processes import ROOT, Gateway, Simulator

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Requests per round per key, and their sizes: a heavy batch user, a chat app, a light user.
KEYS = {"batch-jobs": (60, 120), "chat-app": (40, 40), "analyst": (10, 200)}
ROUNDS = 3


def run(out: Path) -> None:
    """Drive the load, write the reports and the plot into `out`."""
    workdir = Path(tempfile.mkdtemp(prefix="sluice-usage-"))
    url = f"sqlite:///{workdir / 'ledger.db'}"
    engine = connect({"DATABASE_URL": url})
    ring = KeyRing(None, None, DatabaseKeyStore(engine))
    keys = {name: ring.create(name)[0] for name in KEYS}
    simulator = Simulator("--itl", "0.002", log=workdir / "simulator.log")
    gateway = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2", "SLUICE_DATABASE_URL": url},
                      log=workdir / "gateway.log")
    rng = random.Random(18)
    try:
        for day in range(ROUNDS):
            jobs = [(name, rng.randint(max_tokens // 2, max_tokens)) for name, (count, max_tokens) in KEYS.items()
                    for _ in range(count + rng.randint(-count // 4, count // 4))]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(_ask, [gateway] * len(jobs), [keys[name] for name, _ in jobs],
                              [tokens for _, tokens in jobs], [rng.random() < 0.5 for _ in jobs]))
            gateway.stop()  # flushes every buffered row; the next round starts a new gateway
            _move_back(engine, ROUNDS - 1 - day)
            if day < ROUNDS - 1:
                gateway = Gateway({"SLUICE_UPSTREAM_URL": simulator.url, "SLUICE_WORKERS": "2",
                                   "SLUICE_DATABASE_URL": url}, log=workdir / f"gateway-{day}.log")
    finally:
        gateway.stop()
        simulator.stop()
    env = {**os.environ, "SLUICE_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    reports = {f"by-{by}.txt": ["--by", by, "--since", "7d"] for by in ("key", "day")}
    out.mkdir(parents=True, exist_ok=True)
    for name, args in reports.items():
        (out / name).write_text(_sluice(["usage", *args], env))
    per_key_day = {name: json.loads(_sluice(["usage", "--by", "day", "--key", name, "--format", "json"], env))
                   for name in KEYS}
    plot(per_key_day, out / "tokens-per-key-per-day.png")


def _ask(gateway: Gateway, key: str, max_tokens: int, stream: bool) -> None:
    body = {"model": "sim-model", "prompt": "word " * random.randint(5, 60), "max_tokens": max_tokens,
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
    with requests.post(gateway.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       timeout=60, stream=stream) as reply:
        reply.raise_for_status()
        for _ in reply.iter_content(chunk_size=None):
            pass


def _move_back(engine: sa.Engine, days: int) -> None:
    """The rows of the round just run (not yet marked) go back `days` days."""
    with engine.begin() as connection:
        rows = connection.execute(sa.select(ledger.c.id, ledger.c.time, ledger.c.request_id)
                                  .where(ledger.c.request_id.not_like("moved:%"))).all()
        for row in rows:  # a few hundred rows; in Python, since SQLite has no date arithmetic on columns
            connection.execute(sa.update(ledger).where(ledger.c.id == row.id).values(
                time=row.time - timedelta(days=days), request_id=f"moved:{row.request_id}"[:128]))


def _sluice(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return done.stdout


def plot(per_key_day: dict[str, list[dict]], path: Path) -> None:
    """Stacked bars: total tokens per day, one colour per key."""
    days = sorted({row["day"] for rows in per_key_day.values() for row in rows})
    fig, axis = plt.subplots(figsize=(7, 4))
    bottom = [0] * len(days)
    for name, rows in per_key_day.items():
        tokens = {row["day"]: row["total_tokens"] for row in rows}
        heights = [tokens.get(day, 0) for day in days]
        axis.bar(days, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set_ylabel("total tokens (prompt + completion)")
    axis.set_title("Tokens per key per day (`sluice usage --by day --key NAME`)")
    axis.legend()
    axis.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "usage")
    run(parser.parse_args().out)
