"""`python -m bench.run --short` end to end: every design measured, every table and plot produced.

It judges that the benchmark works, never how fast anything is: the machine running the
tests is shared and its speed says nothing.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

from bench.designs import BY_NAME
from bench.loadgen import CANCEL_CASES
from bench.processes import ROOT
from bench.report import BEGIN, END


def test_short_benchmark_produces_its_figures(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.run", "--short", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    suite = json.loads((tmp_path / "results.json").read_text())["suite"]
    plan = suite["plan"]
    for design in plan["designs"]:
        blocking = [r for r in suite["blocking"] if r["design"] == design]
        assert [r["concurrency"] for r in blocking] == list(plan["concurrency"])
        assert all(r["requests"] > 0 and r["p50"] > 0 and not math.isnan(r["p99"]) for r in blocking)
        streams = {r["kind"]: r for r in suite["streams"] if r["design"] == design}
        assert streams["streams"]["completed"] == plan["streams"], streams["streams"]["errors"]
        assert streams["streams"]["ttft_p50"] > 0 and streams["streams"]["gap_p50"] > 0
        assert sum(streams["streams"]["gap_histogram"]) > 0
        cancels = [r for r in suite["cancel"] if r["design"] == design]
        if BY_NAME[design].relay_app:
            assert not cancels, "the small relays watch for no departed client: nothing to time"
            continue
        assert sorted({r["case"] for r in cancels}) == sorted(CANCEL_CASES)
        assert all(r["seconds"] is not None for r in cancels), "every abandoned request reached the upstream's close"
    capacity = [r for r in suite["streams"] if r["kind"] == "capacity"]
    assert {r["design"] for r in capacity} == set(plan["capacity_designs"])
    # Sluice's own processes were sampled: memory and CPU per request are figures, not zeros.
    sluice = next(r for r in suite["blocking"] if r["design"] == "sluice-1w")
    assert sluice["cpu_us_per_request"] > 0

    rendered = (tmp_path / "results.md").read_text()
    assert rendered.startswith(BEGIN) and rendered.rstrip().endswith(END)
    for heading in ("### Targets", "### Designs side by side", "### The stack's floor", "### Blocking requests",
                    "### Cancellation"):
        assert heading in rendered
    for plot in ("latency.png", "gaps.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
        assert f"]({plot})" in rendered
