"""From the suite's raw rows to figures: per-design spreads over rounds, differences and ratios
against the references measured in the same round, and the verdict on each target of the issue.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.stats import Spread

REFERENCE = "direct"
NGINX = "nginx"  # a proxy in C: what CPU per token and time to first token are compared with
SEED = "seed-flask"  # the guide's 20-line Flask + requests proxy: what Sluice's CPU is compared with
SUBJECT = "sluice-1w"  # the design the targets are about: one gevent worker on one core
UPSTREAM_GAP = 0.02  # the simulator's time between tokens in the stream phases
SATURATED = 0.9  # load-side CPU share above which the client, not the proxy, may be the limit

# The targets.
CPU_PER_REQUEST_VS_SEED_MAX = 0.4  # CPU per blocking request, as a share of the seed proxy's
CPU_PER_REQUEST_MAX = 670e-6  # the same in absolute terms: 1,500 requests/s on one core
ADDED_P50_MAX = 0.001
ADDED_P99_MAX = 0.002
RPS_MIN = 1500
CPU_PER_TOKEN_VS_NGINX_MAX = 2.0
TTFT_RATIO_MAX = 4.0  # time to first token p50 at 500 streams, as a multiple of nginx's
RSS_PER_STREAM_MAX = 50 * 1024
CANCEL_MAX = 1.0


class Suite:
    """Lookups over the rows of one suite run."""

    def __init__(self, suite: dict[str, Any]) -> None:
        self.raw = suite
        self.plan = suite["plan"]
        self.designs: list[str] = list(self.plan["designs"])
        self.rounds = range(self.plan["rounds"])

    def blocking(self, design: str, concurrency: int, round_: int) -> dict[str, Any] | None:
        return next((r for r in self.raw["blocking"] if r["design"] == design and r["round"] == round_
                     and r["concurrency"] == concurrency), None)

    def streams(self, design: str, kind: str, round_: int) -> dict[str, Any] | None:
        return next((r for r in self.raw["streams"] if r["design"] == design and r["round"] == round_
                     and r["kind"] == kind), None)

    def cancels(self, design: str, case: str) -> list[float | None]:
        return [r["seconds"] for r in self.raw["cancel"] if r["design"] == design and r["case"] == case]

    def api(self, design: str) -> str:
        return next((r["api"] for r in self.raw["blocking"] if r["design"] == design), "?")

    def over_rounds(self, figure: Callable[[int], float | None]) -> Spread:
        """The spread of a figure computed for each round."""
        return Spread.of(figure(r) for r in self.rounds)

    def blocking_figure(self, design: str, concurrency: int, key: str) -> Spread:
        value = self.blocking_value(concurrency, key)
        return self.over_rounds(lambda r: value(design, r))

    def streams_figure(self, design: str, kind: str, key: str) -> Spread:
        value = self.streams_value(kind, key)
        return self.over_rounds(lambda r: value(design, r))

    def added_latency(self, design: str, concurrency: int, key: str) -> Spread:
        """The design's latency minus the direct path's, in the same round."""
        return self.over_rounds(lambda r: _minus(_get(self.blocking(design, concurrency, r), key),
                                                 _get(self.blocking(REFERENCE, concurrency, r), key)))

    def added_ttft(self, design: str, kind: str) -> Spread:
        """The design's median time to first token minus the direct path's, in the same round."""
        return self.over_rounds(lambda r: _minus(_get(self.streams(design, kind, r), "ttft_p50"),
                                                 _get(self.streams(REFERENCE, kind, r), "ttft_p50")))

    def blocking_value(self, concurrency: int, key: str) -> Callable[[str, int], float | None]:
        """value(design, round) of a blocking level's `key`: what ratio() divides."""
        return lambda design, r: _get(self.blocking(design, concurrency, r), key)

    def streams_value(self, kind: str, key: str) -> Callable[[str, int], float | None]:
        """value(design, round) of a stream phase's `key`: what ratio() divides."""
        return lambda design, r: _get(self.streams(design, kind, r), key)

    def ratio(self, design: str, other: str, figure: Callable[[str, int], float | None]) -> Spread:
        """figure(design) / figure(other), round by round."""
        return self.over_rounds(lambda r: _divide(figure(design, r), figure(other, r)))


def _get(row: dict[str, Any] | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _divide(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass(frozen=True)
class Verdict:
    """One target: what it asks, what was measured, and whether it was met."""

    target: str
    measured: str
    met: bool | None  # None: not measured in this run
    caveat: str = ""


def _ms(s: Spread) -> str:
    return "not measured" if not s.known else f"{s.median * 1e3:.2f} ms [{s.low * 1e3:.2f}–{s.high * 1e3:.2f}]"


def _judge(s: Spread, ok: Callable[[float], bool]) -> bool | None:
    return None if not s.known else ok(s.median)


def _saturated(rows: Iterable[dict[str, Any] | None]) -> bool:
    return any(row is not None and row["client_cpu_share"] > SATURATED for row in rows)


def verdicts(suite: Suite) -> list[Verdict]:
    """The issue's targets for one Sluice worker, judged on the medians over rounds."""
    out: list[Verdict] = []
    subject = SUBJECT if SUBJECT in suite.designs else None
    if subject is None:
        return out
    p50, p99 = suite.added_latency(subject, 1, "p50"), suite.added_latency(subject, 1, "p99")
    out.append(Verdict("added latency at concurrency 1: p50 ≤ 1 ms", _ms(p50),
                       _judge(p50, lambda v: v <= ADDED_P50_MAX)))
    out.append(Verdict("added latency at concurrency 1: p99 ≤ 2 ms", _ms(p99),
                       _judge(p99, lambda v: v <= ADDED_P99_MAX)))
    top = max(suite.plan["concurrency"])
    rps = suite.blocking_figure(subject, top, "rps")
    out.append(Verdict(f"blocking throughput at concurrency {top}: ≥ {RPS_MIN:,} requests/s per worker",
                       "not measured" if not rps.known else f"{rps.median:,.0f} req/s [{rps.low:,.0f}–{rps.high:,.0f}]",
                       _judge(rps, lambda v: v >= RPS_MIN)))
    out.extend(_cost_verdicts(suite, subject, top))
    out.extend(_capacity_verdicts(suite, subject))
    for case, label in (("stream_before_first_token", "before"), ("stream_after_first_token", "after")):
        trials = suite.cancels(subject, case)
        seen = [t for t in trials if t is not None]
        worst = max(seen) if seen else math.nan
        measured = (f"worst {worst * 1e3:.0f} ms of {len(trials)} trials"
                    + (f", {len(trials) - len(seen)} never closed" if len(seen) < len(trials) else "")) if trials \
            else "not measured"
        out.append(Verdict(f"client disconnect → upstream closed ≤ 1 s, {label} the first token", measured,
                           None if not trials else len(seen) == len(trials) and worst <= CANCEL_MAX))
    return out


def _times(s: Spread) -> str:
    return f"{s.median:.2f}× [{s.low:.2f}–{s.high:.2f}]"


def _cost_verdicts(suite: Suite, subject: str, top: int) -> list[Verdict]:
    """CPU per request against the seed proxy, CPU per token and time to first token against nginx."""
    out: list[Verdict] = []

    cpu_per_request = suite.blocking_value(top, "cpu_us_per_request")
    own = suite.blocking_figure(subject, top, "cpu_us_per_request")
    if SEED in suite.designs:
        ratio = suite.ratio(subject, SEED, cpu_per_request)
        seed = suite.blocking_figure(SEED, top, "cpu_us_per_request")
        out.append(Verdict(f"CPU per blocking request (c={top}) ≤ {CPU_PER_REQUEST_VS_SEED_MAX:g}× the seed proxy's",
                           "not measured" if not ratio.known else
                           f"{own.median:,.0f} µs vs seed-flask {seed.median:,.0f} µs: {_times(ratio)}",
                           _judge(ratio, lambda v: v <= CPU_PER_REQUEST_VS_SEED_MAX)))
    out.append(Verdict(f"CPU per blocking request (c={top}) ≤ {CPU_PER_REQUEST_MAX * 1e6:.0f} µs",
                       "not measured" if not own.known else f"{own.median:,.0f} µs [{own.low:,.0f}–{own.high:,.0f}]",
                       _judge(own, lambda v: v <= CPU_PER_REQUEST_MAX * 1e6)))
    if NGINX not in suite.designs:
        return out
    per_token = suite.ratio(subject, NGINX, suite.streams_value("streams", "cpu_us_per_event"))
    mine, nginx = (suite.streams_figure(d, "streams", "cpu_us_per_event") for d in (subject, NGINX))
    out.append(Verdict(f"CPU per relayed token ({suite.api(subject)} API) ≤ {CPU_PER_TOKEN_VS_NGINX_MAX:g}× nginx's",
                       "not measured" if not per_token.known else
                       f"{mine.median:.0f} µs vs nginx {nginx.median:.0f} µs: {_times(per_token)}",
                       _judge(per_token, lambda v: v <= CPU_PER_TOKEN_VS_NGINX_MAX)))
    count = suite.plan["streams"]
    ttft = suite.ratio(subject, NGINX, suite.streams_value("streams", "ttft_p50"))
    mine, nginx = (suite.streams_figure(d, "streams", "ttft_p50") for d in (subject, NGINX))
    out.append(Verdict(f"time to first token p50, {count:,} concurrent streams ≤ {TTFT_RATIO_MAX:g}× nginx's",
                       "not measured" if not ttft.known else
                       f"{mine.median * 1e3:,.0f} ms vs nginx {nginx.median * 1e3:,.0f} ms: {_times(ttft)}",
                       _judge(ttft, lambda v: v <= TTFT_RATIO_MAX),
                       "the load side (client + upstream) was saturated: the client may be the limit"
                       if _saturated(suite.streams(subject, "streams", r) for r in suite.rounds) else ""))
    return out


def _capacity_verdicts(suite: Suite, subject: str) -> list[Verdict]:
    count = suite.plan["capacity"]
    rows = [suite.streams(subject, "capacity", r) for r in suite.rounds]
    if subject not in suite.plan["capacity_designs"] or not any(rows):
        return []
    completed = suite.streams_figure(subject, "capacity", "completed")
    out = [Verdict(f"{count:,} concurrent streams through one worker: all complete",
                   f"{completed.low:,.0f} of {count:,} in the worst round",
                   completed.low == count)]
    rss = suite.streams_figure(subject, "capacity", "rss_per_stream")
    # Divided by streams that were not all open at the peak, the figure would be too low.
    apart = sum(1 for row in rows if row is not None and not row.get("open_together"))
    out.append(Verdict(f"{count:,} streams: resident memory ≤ 50 KiB per open stream",
                       "not measured" if not rss.known else
                       f"{rss.median / 1024:.1f} KiB [{rss.low / 1024:.1f}–{rss.high / 1024:.1f}]"
                       + (f" (in {apart} round(s) not all open at once: too low)" if apart else ""),
                       None if apart else _judge(rss, lambda v: v <= RSS_PER_STREAM_MAX)))
    return out
