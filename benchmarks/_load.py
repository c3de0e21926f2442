"""What the benchmark scripts share: one closed-loop load level through clipper-bench's
generator (so every script measures latency the same way, with numpy's percentiles), the CPU
time of the processes under test, the ``median (min-max)`` summary, and the results file.

Not a benchmark itself (the leading underscore keeps it out of the scenario runner's list).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Mapping

from clipper_core.bench import BenchConfig, build_target
from clipper_core.bench.runner import make_pool, run_level

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


async def closed_level(url: str, concurrency: int, *, body_template: str,
                       warmup_s: float = 1.0, duration_s: float = 3.0,
                       pids: Mapping[str, int] | None = None) -> dict[str, Any]:
    """``concurrency`` closed-loop users of clipper-bench's generator (one worker process) for
    ``warmup_s`` + ``duration_s``; latency and counts cover the measured ``duration_s`` only.

    ``body_template`` is a JSON body; ``{{i}}`` in it becomes a counter, so inputs can be
    distinct (a cache miss each) or the same (hits).  For each ``pids`` entry the result has
    ``<name>_cpu_us`` per answer: that process's CPU time over warm-up and measurement,
    divided by the answers of both counted at the measured rate.
    """
    target = build_target(url, body_template=body_template, stats_url="none")
    cfg = BenchConfig(target=target, mode="closed", levels=(float(concurrency),),
                      warmup=warmup_s, duration=duration_s, window=min(duration_s, 2.0),
                      workers=1)
    pids = dict(pids or {})
    pool = make_pool(cfg)
    await pool.start()
    try:
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        lvl = await run_level(pool, cfg, 0)
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    finally:
        await pool.close()
    n = lvl.ok
    defaults = round((lvl.default_share or 0.0) * n)
    answered = lvl.achieved_rps * (warmup_s + duration_s)
    out: dict[str, Any] = {
        "concurrency": concurrency, "answers": n, "predictions": n - defaults,
        "defaults": defaults, "errors": lvl.error_count,
        "answers_per_s": lvl.achieved_rps, "throughput": (n - defaults) / duration_s,
        "p50_ms": None if lvl.latency.p50 is None else lvl.latency.p50 * 1e3,
        "p99_ms": None if lvl.latency.p99 is None else lvl.latency.p99 * 1e3,
        "default_share": lvl.default_share if n else None,
        "cache_hit_share": lvl.cache_hit_share if n else None,
        "client_cpu_us": lvl.generator_cpu * duration_s / n * 1e6 if n else None,
    }
    for k, s in cpu.items():
        out[f"{k}_cpu_us"] = s / answered * 1e6 if answered else None
    return out


def med(xs: list, digits: int | None = None) -> str:
    """``median (min-max)`` of the values that are not None; ``-`` when there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    if digits is None:
        digits = 0 if abs(m) >= 100 else (1 if abs(m) >= 1 else 2)
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def save(name: str, payload: dict[str, Any], out_dir: str = RESULTS) -> str:
    """Write ``payload`` with the machine's description to ``out_dir/name-TIMESTAMP.json``."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    doc = {"benchmark": name, **payload, "python": sys.version.split()[0],
           "machine": platform.platform(), "cpus": os.cpu_count(),
           "loadavg_at_save": os.getloadavg()}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    return path
