"""Server CPU per request: Clipper's own /predict against Open Inference Protocol v2 requests
(JSON and binary tensors) for the same no-op model, interleaved, repeated.

    .venv/bin/python benchmarks/oip_overhead.py [--requests 3000] [--reps 3] [--batch-size 1]
        [--variants predict-json] [--out results.json]

Reports the CPU time per request of the frontend process and of the model's replica process
separately (utime + stime from /proc/PID/stat over a fixed number of requests, the measure
MEASURED.md recommends over raw req/s on a shared machine) and throughput, median with min
and max over the repetitions, with the load average; saves JSON under benchmarks/results/
(or ``--out``).  ``--batch-size 1`` measures the query path itself, one query per RPC.

To compare two source trees (before/after a change), run it alternately with each tree first
on ``PYTHONPATH``, at least three times each, and compare the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import aiohttp
import numpy as np

from clipper_core.testing import ClipperProcess


def noop(inputs):
    return [0.0 for _ in inputs]


def _median_span(xs: list) -> str:
    return f"{statistics.median(xs):.0f} [{min(xs):.0f}, {max(xs):.0f}]"


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def variants(base: str) -> dict:
    x = np.arange(10, dtype=np.float64)
    oip_json = json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 10],
                                       "data": x.tolist()}]}).encode()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 10],
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return {
        "predict-json": (f"{base}/bench/predict", json.dumps({"input": x.tolist()}).encode(),
                         {"Content-Type": "application/json"}),
        "oip-json": (f"{base}/v2/models/bench/infer", oip_json,
                     {"Content-Type": "application/json"}),
        "oip-binary": (f"{base}/v2/models/bench/infer", head + x.tobytes(),
                       {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}),
    }


async def run(url: str, body: bytes, headers: dict, n: int, concurrency: int) -> float:
    left = n

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status

    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=-1,
                    help="the model's batch size (-1: adaptive, the default)")
    ap.add_argument("--variants", default="predict-json,oip-json,oip-binary",
                    help="comma-separated subset of predict-json, oip-json, oip-binary")
    ap.add_argument("--out", help="write the results JSON here")
    args = ap.parse_args()
    load = os.getloadavg()
    with ClipperProcess() as c:
        c.conn.register_application("bench", "doubles", -1.0, 1_000_000, cache_enabled=False)
        c.conn.deploy_python_closure("bench-noop", 1, "doubles", noop,
                                     batch_size=args.batch_size)
        c.conn.link_model_to_app("bench", "bench-noop")
        pid = c.endpoints["pid"]
        replicas = [r["pid"] for r in c.conn.get_all_model_replicas(verbose=True)
                    if r.get("model_name") == "bench-noop"]
        if len(replicas) != 1:
            raise SystemExit(f"expected one replica of bench-noop, found {replicas}")
        rpid = replicas[0]
        vs = {k: v for k, v in variants(c.query_url).items()
              if k in args.variants.split(",")}
        results: dict = {k: {"cpu_us": [], "replica_cpu_us": [], "rps": []} for k in vs}
        for name, (url, body, headers) in vs.items():  # warm-up
            asyncio.run(run(url, body, headers, 300, args.concurrency))
        for _ in range(args.reps):
            for name, (url, body, headers) in vs.items():
                c0, r0 = cpu_s(pid), cpu_s(rpid)
                wall = asyncio.run(run(url, body, headers, args.requests, args.concurrency))
                results[name]["cpu_us"].append((cpu_s(pid) - c0) / args.requests * 1e6)
                results[name]["replica_cpu_us"].append(
                    (cpu_s(rpid) - r0) / args.requests * 1e6)
                results[name]["rps"].append(args.requests / wall)
    after = os.getloadavg()
    print(f"batch size {args.batch_size}, {args.requests} requests x {args.reps}, "
          f"concurrency {args.concurrency}; load average {load[0]:.2f} before, "
          f"{after[0]:.2f} after")
    print(f"{'variant':<14}{'frontend CPU us/req':>24}{'replica CPU us/req':>24}"
          f"{'req/s':>22}   (median [min, max])")
    summary = {}
    for name, r in results.items():
        cpu, rcpu, rps = r["cpu_us"], r["replica_cpu_us"], r["rps"]
        summary[name] = {"cpu_us_median": statistics.median(cpu), "cpu_us": cpu,
                         "replica_cpu_us_median": statistics.median(rcpu),
                         "replica_cpu_us": rcpu,
                         "rps_median": statistics.median(rps), "rps": rps}
        print(f"{name:<14}{_median_span(cpu):>24}{_median_span(rcpu):>24}"
              f"{_median_span(rps):>22}")
    if "predict-json" in summary:
        base = summary["predict-json"]["cpu_us_median"]
        for name in ("oip-json", "oip-binary"):
            if name in summary:
                print(f"{name} / predict-json frontend CPU ratio: "
                      f"{summary[name]['cpu_us_median'] / base:.2f}")
    out = args.out
    if out is None:
        os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
        out = os.path.join(os.path.dirname(__file__), "results", "oip_overhead.json")
    with open(out, "w") as f:
        json.dump({"args": vars(args), "python": sys.version.split()[0],
                   "loadavg": [load[0], after[0]], "results": summary}, f, indent=1)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
