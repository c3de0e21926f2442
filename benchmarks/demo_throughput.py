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

from _load import closed_level, save
from clipper_core.testing import ClipperProcess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    with ClipperProcess(extra_args=("--demo",)) as c:
        # every input distinct, so this measures the model path, not the cache
        res = asyncio.run(closed_level(
            f"{c.query_url}/demo/predict", args.concurrency,
            body_template='{"input": [1.0, 2.0, {{i}}.0]}', warmup_s=args.warmup,
            duration_s=args.duration))
    print(f"demo app, closed loop, concurrency {args.concurrency}, {args.duration:g} s: "
          f"{res['answers_per_s']:.0f} queries/s, p50 {res['p50_ms']:.2f} ms, "
          f"p99 {res['p99_ms']:.2f} ms, {res['defaults']} defaults, {res['errors']} errors, "
          f"cache hit share {res['cache_hit_share']:.3f}")
    print(f"saved {save('demo_throughput', {'args': vars(args), 'result': res})}")


if __name__ == "__main__":
    main()
