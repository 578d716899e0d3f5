"""Percentiles within one measurement, and medians with their spread across rounds."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def share_below(values: Sequence[float], limit: float) -> float:
    """The fraction of values under `limit`; NaN for no values."""
    return sum(1 for v in values if v < limit) / len(values) if values else math.nan


@dataclass(frozen=True)
class Spread:
    """One figure over several rounds: its median, and the lowest and highest round."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        """The spread of the rounds that produced a figure (None and NaN rounds are left out)."""
        kept = sorted(v for v in values if v is not None and not math.isnan(v))
        if not kept:
            return cls(math.nan, math.nan, math.nan)
        middle = len(kept) // 2
        median = kept[middle] if len(kept) % 2 else (kept[middle - 1] + kept[middle]) / 2
        return cls(median, kept[0], kept[-1])

    @property
    def known(self) -> bool:
        return not math.isnan(self.median)


def histogram(values: Iterable[float], width: float, bins: int) -> list[int]:
    """Counts in `bins` bins of `width` from 0, plus one last bin for everything beyond."""
    counts = [0] * (bins + 1)
    for value in values:
        counts[min(int(value / width), bins)] += 1
    return counts
