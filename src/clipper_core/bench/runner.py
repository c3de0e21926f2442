"""A sweep of load levels: drive the workers, judge stability, reduce the samples.

Accounting of one level (``D`` is the measured duration)
    * bounded by windows (``--duration`` or stability windows): ``D`` is the number
      of windows kept times the window length;
    * bounded by ``--requests``: ``D`` runs until the last measured request was
      answered.

    A request is *measured* when it was (scheduled to be) sent in ``[0, D)`` after
    warm-up. Latency statistics, errors, SLO attainment and the default / cache
    shares cover the measured requests, including those answered after ``D``
    (the level drains before it ends). Achieved throughput counts successful
    answers that *arrived* in ``[0, D)``, divided by ``D``, so a server that
    falls behind an open-loop schedule shows lower throughput and growing
    latency rather than a hidden backlog.

    SLO attainment is the share of measured requests that got a successful answer
    within ``--slo-ms``; failed requests count against it.
"""

from __future__ import annotations

import asyncio
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import numpy as np

from .loadgen import (
    STATUS_NAMES,
    UNBOUNDED_WINDOWS,
    InProcessPool,
    LevelPlan,
    Payload,
    ProcessPool,
    WorkerError,
)
from .schedule import ARRIVALS
from .serverstats import breakdown, fetch_stats
from .stats import LatencySummary, WindowStat, is_stable, summarize
from .target import FLAG_CACHE_HIT, FLAG_DEFAULT, BenchConfigError, Target

__all__ = [
    "BEHIND_LAG_S",
    "SATURATION_CORES",
    "BenchConfig",
    "LevelResult",
    "Pool",
    "ProgressSink",
    "SweepResult",
    "run_level",
    "run_sweep",
]

#: A worker busier than this share of one core may itself be the bottleneck.
SATURATION_CORES = 0.9
#: Open loop: a p99 send lag above this means the generator fell behind its schedule.
BEHIND_LAG_S = 0.005


@dataclass(frozen=True)
class BenchConfig:
    """Everything a sweep needs; validated on construction."""

    target: Target
    mode: str  # "closed" or "open"
    levels: tuple[float, ...]
    arrivals: str = "poisson"
    seed: int = 0
    warmup: float = 1.0
    duration: float | None = None
    requests: int | None = None
    window: float = 2.0
    stability_pct: float = 10.0
    max_windows: int = 10
    slo_ms: float | None = None
    timeout: float = 30.0
    max_inflight: int = 10000
    workers: int = 1  # 0: one generator in the calling process

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise BenchConfigError(f"mode must be 'closed' or 'open', got {self.mode!r}")
        if not self.levels:
            raise BenchConfigError("at least one load level is needed")
        for v in self.levels:
            if self.mode == "closed" and (v != int(v) or v < 1):
                raise BenchConfigError(f"--concurrency values must be whole numbers >= 1, got {v!r}")
            if self.mode == "open" and not v > 0:
                raise BenchConfigError(f"--rate values must be > 0 requests/s, got {v!r}")
        if self.arrivals not in ARRIVALS:
            raise BenchConfigError(f"--arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}")
        if self.duration is not None and self.requests is not None:
            raise BenchConfigError("give --duration or --requests, not both")
        if self.duration is not None and not self.duration > 0:
            raise BenchConfigError(f"--duration must be > 0 seconds, got {self.duration!r}")
        if self.requests is not None and self.requests < 1:
            raise BenchConfigError(f"--requests must be >= 1, got {self.requests!r}")
        if self.warmup < 0:
            raise BenchConfigError(f"--warmup must be >= 0 seconds, got {self.warmup!r}")
        if not self.window > 0:
            raise BenchConfigError(f"--window must be > 0 seconds, got {self.window!r}")
        if self.max_windows < 1:
            raise BenchConfigError(f"--max-windows must be >= 1, got {self.max_windows!r}")
        if self.stability_pct < 0:
            raise BenchConfigError(f"--stability-pct must be >= 0, got {self.stability_pct!r}")
        if self.slo_ms is not None and not self.slo_ms > 0:
            raise BenchConfigError(f"--slo-ms must be > 0, got {self.slo_ms!r}")
        if not self.timeout > 0:
            raise BenchConfigError(f"--timeout must be > 0 seconds, got {self.timeout!r}")
        if self.max_inflight < 1:
            raise BenchConfigError(f"--max-inflight must be >= 1, got {self.max_inflight!r}")
        if self.workers < 0:
            raise BenchConfigError(f"--workers must be >= 0, got {self.workers!r}")

    @property
    def stop_rule(self) -> str:
        """``"duration"``, ``"requests"`` or ``"stability"``."""
        if self.duration is not None:
            return "duration"
        if self.requests is not None:
            return "requests"
        return "stability"

    def plan(self, index: int) -> LevelPlan:
        """The :class:`LevelPlan` of level ``index``."""
        window, windows = self.window, self.max_windows
        if self.duration is not None:
            # Whole windows that tile the duration exactly.
            windows = max(1, round(self.duration / self.window))
            window = self.duration / windows
        elif self.requests is not None:
            windows = UNBOUNDED_WINDOWS
        return LevelPlan(
            mode=self.mode,
            value=self.levels[index],
            arrivals=self.arrivals,
            seed=f"{self.seed}/{index}",
            warmup=self.warmup,
            window=window,
            windows=windows,
            requests=self.requests,
            timeout=self.timeout,
            max_inflight=self.max_inflight,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": dict(self.target.description),
            "mode": self.mode,
            "levels": list(self.levels),
            "arrivals": self.arrivals if self.mode == "open" else None,
            "seed": self.seed,
            "warmup_s": self.warmup,
            "duration_s": self.duration,
            "requests": self.requests,
            "stop_rule": self.stop_rule,
            "window_s": self.window,
            "stability_pct": self.stability_pct,
            "max_windows": self.max_windows,
            "slo_ms": self.slo_ms,
            "timeout_s": self.timeout,
            "max_inflight": self.max_inflight,
            "workers": self.workers,
        }


@dataclass
class LevelResult:
    """The measurements of one load level. Times are seconds unless named otherwise."""

    index: int
    mode: str
    level: float
    duration: float
    windows: list[WindowStat]
    stable: bool | None
    sent: int
    ok: int
    offered_rps: float
    achieved_rps: float
    latency: LatencySummary
    errors: dict[str, int]
    slo_ms: float | None
    slo_attainment: float | None
    default_share: float | None
    cache_hit_share: float | None
    send_lag: LatencySummary | None
    generator_cpu: float  # cores, all workers together
    generator_cpu_max_worker: float
    workers: int
    server: dict[str, Any] | None
    #: predictions (not defaults, not refusals) answered within the SLO, per second
    goodput_rps: float | None = None
    raw: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"c={int(self.level)}"
        return f"r={self.level:g}/s"

    @property
    def generator_saturated(self) -> bool:
        return self.generator_cpu_max_worker >= SATURATION_CORES

    @property
    def generator_behind(self) -> bool:
        """Open loop: requests left late (CPU, or a full --max-inflight); the delay is in the latency."""
        return self.send_lag is not None and (self.send_lag.p99 or 0.0) > BEHIND_LAG_S

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": int(self.level) if self.mode == "closed" else None,
            "rate": self.level if self.mode == "open" else None,
            "duration_s": self.duration,
            "windows": [
                {"throughput_rps": w.throughput, "p99_ms": None if w.p99 is None else w.p99 * 1e3, "answers": w.count}
                for w in self.windows
            ],
            "stable": self.stable,
            "requests": {"sent": self.sent, "ok": self.ok, "errors": self.error_count},
            "offered_rps": self.offered_rps,
            "achieved_rps": self.achieved_rps,
            "latency_ms": self.latency.as_ms(),
            "errors": dict(self.errors),
            "slo_ms": self.slo_ms,
            "slo_attainment": self.slo_attainment,
            "default_share": self.default_share,
            "goodput_rps": self.goodput_rps,
            "cache_hit_share": self.cache_hit_share,
            "send_lag_ms": None if self.send_lag is None else self.send_lag.as_ms(),
            "generator": {
                "workers": self.workers,
                "cpu_cores": self.generator_cpu,
                "cpu_cores_max_worker": self.generator_cpu_max_worker,
                "saturated": self.generator_saturated,
                "behind_schedule": self.generator_behind,
            },
            "server": self.server,
        }


@dataclass
class SweepResult:
    config: BenchConfig
    levels: list[LevelResult]
    started_at: float
    finished_at: float

    def to_dict(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            tool_version: str | None = version("clipper-serving")
        except PackageNotFoundError:
            tool_version = None
        return {
            "tool": "clipper-bench",
            "version": tool_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "config": self.config.as_dict(),
            "levels": [lvl.to_dict() for lvl in self.levels],
        }


class Pool(Protocol):
    workers: int

    async def start(self) -> None: ...
    async def begin(self, plan: LevelPlan) -> float: ...
    async def recv(self) -> tuple: ...
    def stop_after(self, windows: int) -> None: ...
    async def close(self) -> None: ...


class ProgressSink(Protocol):
    def level_start(self, index: int, total: int, label: str) -> None: ...
    def window(self, index: int, total: int, label: str, n: int, limit: int | None, stat: WindowStat) -> None: ...
    def level_done(self, result: LevelResult, total: int) -> None: ...


class _NoProgress:
    def level_start(self, index: int, total: int, label: str) -> None:
        pass

    def window(self, index: int, total: int, label: str, n: int, limit: int | None, stat: WindowStat) -> None:
        pass

    def level_done(self, result: LevelResult, total: int) -> None:
        pass


_COLUMNS = ("send", "lat", "lag", "status", "flags")
_DTYPES = (np.float64, np.float64, np.float64, np.int16, np.uint8)


def _arrays(payloads: Sequence[Payload]) -> dict[str, np.ndarray]:
    out = {}
    for i, (name, dtype) in enumerate(zip(_COLUMNS, _DTYPES)):
        parts = [np.frombuffer(p[i], dtype=dtype) for p in payloads if p[i]]
        out[name] = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    return out


def _ok(status: np.ndarray) -> np.ndarray:
    return (status >= 200) & (status < 300)


def _window_stat(payloads: Sequence[Payload], window: float) -> WindowStat:
    a = _arrays(payloads)
    ok = _ok(a["status"])
    lat = a["lat"][ok]
    p99 = summarize(lat).p99 if lat.size else None
    return WindowStat(throughput=int(ok.sum()) / window, p99=p99, count=int(ok.sum()))


def _status_name(code: int) -> str:
    return STATUS_NAMES.get(code, str(code))


async def run_level(
    pool: Pool,
    cfg: BenchConfig,
    index: int,
    *,
    progress: ProgressSink | None = None,
    stats_session: aiohttp.ClientSession | None = None,
) -> LevelResult:
    """Run level ``index`` of ``cfg`` on ``pool`` and reduce what the workers report."""
    progress = progress or _NoProgress()
    plan = cfg.plan(index)
    nlevels = len(cfg.levels)
    workers = pool.workers
    label = f"c={int(plan.value)}" if plan.mode == "closed" else f"r={plan.value:g}/s"
    progress.level_start(index, nlevels, label)
    stats_url = cfg.target.stats_url if stats_session is not None else None

    t0 = await pool.begin(plan)
    ms = t0 + plan.warmup

    async def snapshot_at_start() -> dict[str, Any] | None:
        await asyncio.sleep(max(0.0, ms - time.monotonic()))
        return await fetch_stats(stats_session, stats_url)  # type: ignore[arg-type]

    before_task = asyncio.create_task(snapshot_at_start()) if stats_url else None
    try:
        by_boundary: dict[int, dict[int, Payload]] = {}
        cpu_at: dict[int, dict[int, float]] = {w: {} for w in range(workers)}
        finals: dict[int, tuple[float, Payload, int]] = {}
        windows: list[WindowStat] = []
        stop_k = plan.windows
        limit = plan.windows if plan.windowed else None
        while len(finals) < workers:
            msg = await pool.recv()
            kind = msg[0]
            if kind == "batch":
                _, wid, b, cpu, payload = msg
                cpu_at[wid][b] = cpu
                by_boundary.setdefault(b, {})[wid] = payload
                # Window j is complete once every worker passed boundary j + 1.
                while len(windows) < stop_k and len(by_boundary.get(len(windows) + 1, ())) == workers:
                    stat = _window_stat(list(by_boundary[len(windows) + 1].values()), plan.window)
                    windows.append(stat)
                    progress.window(index, nlevels, label, len(windows), limit, stat)
                    if (
                        cfg.stop_rule == "stability"
                        and stop_k == plan.windows
                        and is_stable(windows, cfg.stability_pct)
                    ):
                        stop_k = len(windows)
                        pool.stop_after(stop_k)
            elif kind == "final":
                _, wid, cpu, payload, sent = msg
                finals[wid] = (cpu, payload, sent)
            elif kind == "error":
                raise WorkerError(f"load generator worker {msg[1]} failed:\n{msg[2]}")
        before = await before_task if before_task is not None else None
        before_task = None
        after = await fetch_stats(stats_session, stats_url) if stats_url else None  # type: ignore[arg-type]
    finally:
        if before_task is not None:
            before_task.cancel()

    payloads = [p for b in sorted(by_boundary) for p in by_boundary[b].values()]
    payloads += [f[1] for f in finals.values()]
    a = _arrays(payloads)
    send, lat, lag, status, flags = (a[c] for c in _COLUMNS)
    # a latency is never negative: an answer cannot come before its request was due (a
    # clock read a hair early, or a closed-loop send stamped after the fact, would say so)
    lat = np.maximum(lat, 0.0)
    ok = _ok(status)
    end = send + lat

    if plan.windowed:
        windows = windows[:stop_k]
        duration = stop_k * plan.window
        measured = (send >= 0) & (send < duration)
    else:
        measured = send >= 0
        duration = float(end[measured].max()) if measured.any() else 0.0
    duration = max(duration, 1e-9)

    m_ok = measured & ok
    sent = int(measured.sum())
    n_ok = int(m_ok.sum())
    arrived = ok & (end >= 0) & (end < duration) if plan.windowed else m_ok
    achieved = int(arrived.sum()) / duration
    offered = plan.value if plan.mode == "open" else sent / duration
    errors = Counter(_status_name(int(s)) for s in status[measured & ~ok])
    lat_ok = lat[m_ok]
    slo = None
    if cfg.slo_ms is not None and sent:
        slo = int((lat_ok <= cfg.slo_ms / 1e3).sum()) / sent
    default_share = int((flags[m_ok] & FLAG_DEFAULT).astype(bool).sum()) / n_ok if n_ok else None
    # goodput: predictions (successful answers that are not the default output) within the
    # SLO, per second; a refusal is a default (200) or an error (503), never goodput
    good = None
    if cfg.slo_ms is not None:
        is_pred = m_ok & ~(flags & FLAG_DEFAULT).astype(bool)
        good = int((is_pred & (lat <= cfg.slo_ms / 1e3)).sum()) / duration
    cache_share = int((flags[m_ok] & FLAG_CACHE_HIT).astype(bool).sum()) / n_ok if n_ok else None
    send_lag = summarize(lag[measured]) if plan.mode == "open" and sent else None

    used = []
    for w in range(workers):
        start = cpu_at[w].get(0)
        stop = cpu_at[w].get(stop_k) if plan.windowed else None
        if stop is None and w in finals:
            stop = finals[w][0]
        if start is not None and stop is not None:
            used.append(max(0.0, stop - start))
    cpu_total = sum(used) / duration
    cpu_max = max(used, default=0.0) / duration

    if len(windows) >= 3:
        stable: bool | None = is_stable(windows, cfg.stability_pct)
    else:
        stable = None

    result = LevelResult(
        index=index,
        mode=plan.mode,
        level=plan.value,
        duration=duration,
        windows=windows,
        stable=stable,
        sent=sent,
        ok=n_ok,
        offered_rps=offered,
        achieved_rps=achieved,
        latency=summarize(lat_ok),
        errors=dict(sorted(errors.items())),
        slo_ms=cfg.slo_ms,
        slo_attainment=slo,
        default_share=default_share,
        goodput_rps=good,
        cache_hit_share=cache_share,
        send_lag=send_lag,
        generator_cpu=cpu_total,
        generator_cpu_max_worker=cpu_max,
        workers=workers,
        server=breakdown(before, after),
        raw={"send": send[measured], "lat": lat[measured], "lag": lag[measured], "status": status[measured]},
    )
    progress.level_done(result, nlevels)
    return result


def make_pool(cfg: BenchConfig) -> Pool:
    if cfg.workers == 0:
        return InProcessPool(cfg.target)
    return ProcessPool(cfg.target, cfg.workers)


async def run_sweep(cfg: BenchConfig, progress: ProgressSink | None = None, pool: Pool | None = None) -> SweepResult:
    """Run every level of ``cfg`` in order and return the results."""
    started = time.time()
    pool = pool or make_pool(cfg)
    results: list[LevelResult] = []
    stats_session = aiohttp.ClientSession() if cfg.target.stats_url else None
    try:
        await pool.start()
        for i in range(len(cfg.levels)):
            results.append(await run_level(pool, cfg, i, progress=progress, stats_session=stats_session))
    finally:
        await pool.close()
        if stats_session is not None:
            await stats_session.close()
    return SweepResult(config=cfg, levels=results, started_at=started, finished_at=time.time())


def random_seed() -> int:
    """A seed for runs that did not ask for one; reported so the run can be repeated."""
    return random.SystemRandom().randrange(2**31)
