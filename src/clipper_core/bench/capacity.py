"""The open-loop capacity search of clipper-bench (``--find-capacity LO,HI``).

Capacity is the highest offered rate at which at least ``share`` (default 99 %) of the
requests sent are answered with a prediction within the SLO: defaults, refusals, errors and
late answers all count against it.  :class:`CapacitySearch` is the search itself, sans-IO
(it proposes a rate, is told whether the rate held, and proposes the next): first the
bounds, then bisection on a log scale until the bracket is within ``rel_tol``.  It assumes
that what holds at one rate holds at every lower one; a noisy run can break that, so the
report lists every level it measured.
"""

from __future__ import annotations

import dataclasses
import math

import aiohttp

from .runner import BenchConfig, LevelResult, ProgressSink, make_pool, run_level

__all__ = ["CapacitySearch", "held", "find_capacity"]


class CapacitySearch:
    """Bracket the capacity between ``lo`` and ``hi`` (requests/s).

    ``next_rate()`` is the rate to measure next, or None when done; ``record(rate, ok)``
    says whether it held.  ``capacity`` is the highest rate seen to hold (None when even
    ``lo`` failed); ``bounded`` is False when ``hi`` itself held (capacity >= hi).
    """

    def __init__(self, lo: float, hi: float, rel_tol: float = 0.05, max_steps: int = 12) -> None:
        if not 0 < lo < hi:
            raise ValueError(f"the capacity search needs 0 < LO < HI, got {lo!r}, {hi!r}")
        if not rel_tol > 0:
            raise ValueError("rel_tol must be > 0")
        self.lo, self.hi = float(lo), float(hi)
        self.rel_tol = rel_tol
        self.max_steps = max_steps
        self.good: float | None = None  # highest rate that held
        self.bad: float | None = None  # lowest rate that failed
        self.steps = 0

    def next_rate(self) -> float | None:
        if self.steps >= self.max_steps:
            return None
        if self.good is None and self.bad is None:
            return self.lo
        if self.good is None:
            return None  # lo failed: below the range
        if self.bad is None:
            return self.hi if self.good < self.hi else None
        if self.bad <= self.good * (1.0 + self.rel_tol):
            return None
        return math.sqrt(self.good * self.bad)

    def record(self, rate: float, ok: bool) -> None:
        self.steps += 1
        if ok:
            if self.good is None or rate > self.good:
                self.good = rate
        elif self.bad is None or rate < self.bad:
            self.bad = rate

    @property
    def capacity(self) -> float | None:
        return self.good

    @property
    def bounded(self) -> bool:
        return self.bad is not None


def held(lvl: LevelResult, share: float) -> bool:
    """Whether at least ``share`` of the requests sent at this level got a prediction (not
    the default, not refused, no error) within the SLO."""
    if lvl.goodput_rps is None or not lvl.sent:
        return False
    return lvl.goodput_rps * lvl.duration >= share * lvl.sent - 1e-9


async def find_capacity(cfg: BenchConfig, lo: float, hi: float, *, share: float = 0.99,
                        rel_tol: float = 0.05, progress: ProgressSink | None = None
                        ) -> tuple[float | None, bool, list[LevelResult]]:
    """Run the search against ``cfg.target`` (open loop, ``cfg.slo_ms`` required); returns
    (capacity, bounded, every level measured, in order)."""
    if cfg.slo_ms is None:
        raise ValueError("the capacity search needs --slo-ms")
    search = CapacitySearch(lo, hi, rel_tol)
    pool = make_pool(cfg)
    levels: list[LevelResult] = []
    session = aiohttp.ClientSession() if cfg.target.stats_url else None
    try:
        await pool.start()
        while (rate := search.next_rate()) is not None:
            one = dataclasses.replace(cfg, mode="open", levels=(rate,), seed=cfg.seed + len(levels))
            lvl = await run_level(pool, one, 0, progress=progress, stats_session=session)
            lvl = dataclasses.replace(lvl, index=len(levels))
            levels.append(lvl)
            search.record(rate, held(lvl, share))
    finally:
        await pool.close()
        if session is not None:
            await session.close()
    return search.capacity, search.bounded, levels
