"""Queries/s and latency of the demo app at a fixed concurrency (closed loop).

    .venv/bin/python benchmarks/demo_throughput.py [--concurrency 32] [--duration 10]

Starts a real Clipper with the demo app (a closure summing the input) on free ports, drives it
with clipper-bench's load generator (every input distinct, so no answer comes from the
cache), prints queries/s, p50 and p99, and saves JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from clipper_core.bench import BenchConfig, build_target
from clipper_core.bench.runner import make_pool, run_level
from clipper_core.testing import ClipperProcess


async def drive(url: str, concurrency: int, duration: float, warmup: float) -> dict:
    """One closed-loop level of clipper-bench's generator (its percentiles: numpy's linear
    interpolation); every input distinct, so this measures the model path, not the cache."""
    target = build_target(url, body_template='{"input": [1.0, 2.0, {{i}}.0]}')
    cfg = BenchConfig(target=target, mode="closed", levels=(float(concurrency),),
                      warmup=warmup, duration=duration, window=min(duration, 2.0), workers=1)
    pool = make_pool(cfg)
    await pool.start()
    try:
        lvl = await run_level(pool, cfg, 0)
    finally:
        await pool.close()
    n = lvl.ok
    defaults = round((lvl.default_share or 0.0) * n)
    return {"concurrency": concurrency, "duration_s": duration, "queries": n,
            "qps": lvl.achieved_rps,
            "p50_ms": None if lvl.latency.p50 is None else lvl.latency.p50 * 1e3,
            "p99_ms": None if lvl.latency.p99 is None else lvl.latency.p99 * 1e3,
            "defaults": defaults, "errors": lvl.error_count,
            "cache_hits": round((lvl.cache_hit_share or 0.0) * n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    with ClipperProcess(extra_args=("--demo",)) as c:
        res = asyncio.run(drive(f"{c.query_url}/demo/predict", args.concurrency,
                                args.duration, args.warmup))
    res["cpu_count"] = os.cpu_count()
    print(f"demo app, closed loop, concurrency {res['concurrency']}, {res['duration_s']:g} s: "
          f"{res['qps']:.0f} queries/s, p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
          f"{res['defaults']} defaults, {res['errors']} errors, {res['cache_hits']} cache hits")
    out = os.path.join(os.path.dirname(__file__), "results", "demo_throughput.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
