"""The plots of docs/benchmarks.md, drawn from results.json: latency against concurrency, stream gaps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.designs import ALL  # noqa: E402
from bench.loadgen import GAP_BIN, GAP_BINS  # noqa: E402
from bench.summary import UPSTREAM_GAP, Suite  # noqa: E402

COLOURS = {design.name: f"C{i}" for i, design in enumerate(ALL)}  # one colour per design in every plot


def latency(suite: Suite, path: Path) -> Path:
    """p50 and p99 latency, and requests/s, against concurrency: medians over rounds."""
    levels = suite.plan["concurrency"]
    fig, (lat, rps) = plt.subplots(1, 2, figsize=(11, 4.2))
    for design in suite.designs:
        p50 = [suite.blocking_figure(design, c, "p50").median * 1e3 for c in levels]
        p99 = [suite.blocking_figure(design, c, "p99").median * 1e3 for c in levels]
        colour = COLOURS[design]
        lat.plot(levels, p50, marker="o", color=colour, label=f"{design} p50")
        lat.plot(levels, p99, marker="x", linestyle="--", color=colour, label=f"{design} p99")
        rps.plot(levels, [suite.blocking_figure(design, c, "rps").median for c in levels], marker="o",
                 color=colour, label=design)
    for axis in (lat, rps):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_xlabel("concurrent clients")
        axis.grid(True, which="both", alpha=0.3)
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.set_title(f"{suite.plan['blocking_tokens']}-token completions: latency")
    lat.legend(fontsize=7, ncol=2)
    rps.set_yscale("log")  # a Python proxy and nginx differ by more than 10×
    rps.set_ylabel("requests/s")
    rps.set_title("throughput (proxy on one core)")
    rps.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pooled_histogram(suite: Suite, design: str, kind: str) -> list[int]:
    pooled: list[int] = []
    for r in suite.rounds:
        row = suite.streams(design, kind, r)
        if row is None:
            continue
        counts = row["gap_histogram"]
        pooled = [a + b for a, b in zip(pooled, counts, strict=True)] if pooled else list(counts)
    return pooled


def gaps(suite: Suite, path: Path) -> Path:
    """Cumulative distribution of the time between two tokens at the client, per design."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = ((axes[0], "streams", suite.plan["streams"]), (axes[1], "capacity", suite.plan["capacity"]))
    for axis, kind, count in panels:
        for design in suite.designs:
            counts = _pooled_histogram(suite, design, kind)
            if not counts or not sum(counts):
                continue
            total, running, xs, ys = sum(counts), 0, [], []
            for i, n in enumerate(counts[:-1]):
                running += n
                xs.append((i + 1) * GAP_BIN * 1e3)
                ys.append(running / total)
            axis.plot(xs, ys, color=COLOURS[design], label=design)
        axis.axvline(UPSTREAM_GAP * 1e3, color="grey", linestyle=":", label="upstream: 20 ms")
        axis.set_xlim(0, GAP_BINS * GAP_BIN * 1e3)
        axis.set_xlabel("time between two tokens at the client (ms)")
        axis.set_title(f"{count:,} concurrent streams")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("share of gaps at most this long")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw every plot the results allow; returns the files."""
    if "suite" not in results:
        return []
    suite = Suite(results["suite"])
    return [latency(suite, out / "latency.png"), gaps(suite, out / "gaps.png")]
