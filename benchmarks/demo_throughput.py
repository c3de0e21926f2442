"""Queries/s and latency of the demo app at a fixed concurrency (closed loop).

    .venv/bin/python benchmarks/demo_throughput.py [--concurrency 32] [--duration 10]

Starts a real Clipper with the demo app (a closure summing the input) on free ports, drives it
with an aiohttp client from this process (every input distinct, so no answer comes from the
cache), prints queries/s, p50 and p99, and saves JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time

import aiohttp
import numpy as np

from clipper_core.testing import ClipperProcess


async def drive(url: str, concurrency: int, duration: float, warmup: float) -> dict:
    counter = itertools.count()
    lat: list[float] = []
    defaults = errors = hits = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        t_start = time.perf_counter()
        t_measure = t_start + warmup
        t_end = t_measure + duration

        async def worker() -> None:
            nonlocal defaults, errors, hits
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                # every input distinct: this measures the model path, not the cache
                body = b'{"input": [1.0, 2.0, %d.0]}' % next(counter)
                async with s.post(url, data=body,
                                  headers={"Content-Type": "application/json"}) as r:
                    data = await r.read()
                t1 = time.perf_counter()
                if t0 < t_measure:
                    continue
                if r.status != 200:
                    errors += 1
                    if errors <= 3:
                        print(f"HTTP {r.status}: {data[:300]!r}")
                    continue
                if b'"default":true' in data:
                    defaults += 1
                if b'"cache_hit":true' in data:
                    hits += 1
                lat.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    a = np.array(lat)
    return {"concurrency": concurrency, "duration_s": duration, "queries": len(a),
            "qps": len(a) / duration, "p50_ms": float(np.percentile(a, 50) * 1e3),
            "p99_ms": float(np.percentile(a, 99) * 1e3), "defaults": defaults,
            "errors": errors, "cache_hits": hits}


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
