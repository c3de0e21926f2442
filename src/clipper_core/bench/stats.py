"""Latency statistics and the stability rule of clipper-bench.

Percentiles
    Linear interpolation between the two closest ranks: definition 7 of Hyndman
    and Fan (1996), which is also ``numpy.percentile(..., method="linear")`` (numpy's
    default) and Excel's ``PERCENTILE.INC``. For ``n`` samples sorted ascending as
    ``x[0] .. x[n-1]`` and ``q`` in [0, 100]::

        h = (n - 1) * q / 100
        P(q) = x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])

    so P(0) is the minimum, P(100) the maximum, and P(50) of an even count is the
    mean of the two middle samples. Example: for [10, 20, 30, 40], P(90) has
    h = 2.7 and is 30 + 0.7 * 10 = 37.

Standard deviation
    The sample standard deviation (divisor ``n - 1``); 0.0 for fewer than two samples.

Stability
    A run of measurement windows is stable when, over the last three windows,
    both the throughput and the p99 latency agree within ``pct`` percent: the
    largest of the three is at most ``pct`` percent above the smallest. A window
    without any successful answer has no p99 and is never stable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "REPORTED_PERCENTILES",
    "STABILITY_WINDOWS",
    "LatencySummary",
    "WindowStat",
    "agree_within",
    "is_stable",
    "mean_sd",
    "percentile_sorted",
    "percentiles",
    "summarize",
]

REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
STABILITY_WINDOWS = 3


def percentile_sorted(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ascending ``xs``, by linear interpolation.

    ``xs`` must be sorted and non-empty; see the module docstring for the definition.
    """
    n = len(xs)
    if n == 0:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {q!r}")
    h = (n - 1) * (q / 100.0)
    lo = math.floor(h)
    if lo >= n - 1:
        return float(xs[n - 1])
    frac = h - lo
    a = float(xs[lo])
    b = float(xs[lo + 1])
    # a + frac * (b - a) rather than (1 - frac) * a + frac * b: exact when a == b.
    return a + frac * (b - a)


def percentiles(values: Iterable[float] | np.ndarray, qs: Sequence[float] = REPORTED_PERCENTILES) -> dict[float, float]:
    """Percentiles ``qs`` of unsorted ``values`` (non-empty), keyed by ``q``."""
    xs = np.sort(np.asarray(values, dtype=np.float64), kind="stable")
    return {q: percentile_sorted(xs, q) for q in qs}


def mean_sd(values: Iterable[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (divisor n - 1) of non-empty ``values``."""
    xs = np.asarray(values, dtype=np.float64)
    n = xs.size
    if n == 0:
        raise ValueError("mean of an empty sample")
    mean = float(xs.mean())
    if n < 2:
        return mean, 0.0
    return mean, float(xs.std(ddof=1))


@dataclass(frozen=True)
class LatencySummary:
    """Latency of successful answers, in seconds; every field but ``count`` is None when empty."""

    count: int
    mean: float | None = None
    sd: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p999: float | None = None

    def as_ms(self) -> dict[str, float | None]:
        """The summary in milliseconds, keyed as the JSON report spells it."""

        def ms(v: float | None) -> float | None:
            return None if v is None else v * 1e3

        return {
            "mean": ms(self.mean),
            "sd": ms(self.sd),
            "min": ms(self.min),
            "max": ms(self.max),
            "p50": ms(self.p50),
            "p90": ms(self.p90),
            "p95": ms(self.p95),
            "p99": ms(self.p99),
            "p99.9": ms(self.p999),
        }


def summarize(values: Iterable[float] | np.ndarray) -> LatencySummary:
    """Count, mean, sd, extremes and the reported percentiles of ``values``."""
    xs = np.sort(np.asarray(values, dtype=np.float64), kind="stable")
    n = int(xs.size)
    if n == 0:
        return LatencySummary(count=0)
    mean, sd = mean_sd(xs)
    p = {q: percentile_sorted(xs, q) for q in REPORTED_PERCENTILES}
    return LatencySummary(
        count=n,
        mean=mean,
        sd=sd,
        min=float(xs[0]),
        max=float(xs[-1]),
        p50=p[50.0],
        p90=p[90.0],
        p95=p[95.0],
        p99=p[99.0],
        p999=p[99.9],
    )


@dataclass(frozen=True)
class WindowStat:
    """One measurement window: successful answers per second and their p99 (seconds)."""

    throughput: float
    p99: float | None
    count: int = 0


def agree_within(values: Sequence[float], pct: float) -> bool:
    """True when the largest of ``values`` is at most ``pct`` percent above the smallest."""
    if not values:
        return False
    lo = min(values)
    hi = max(values)
    if lo < 0:
        raise ValueError("stability is defined for non-negative measurements")
    if lo == 0.0:
        return hi == 0.0
    return hi <= lo * (1.0 + pct / 100.0)


def is_stable(windows: Sequence[WindowStat], pct: float, last: int = STABILITY_WINDOWS) -> bool:
    """The stability rule of the module docstring, over the last ``last`` windows."""
    if pct < 0:
        raise ValueError(f"stability percentage must be >= 0, got {pct!r}")
    if len(windows) < last:
        return False
    tail = windows[-last:]
    p99s = [w.p99 for w in tail]
    if any(p is None for p in p99s):
        return False
    return agree_within([w.throughput for w in tail], pct) and agree_within(p99s, pct)  # type: ignore[arg-type]
