"""Server CPU per request: Clipper's own /predict against Open Inference Protocol v2 requests
(JSON and binary tensors) for the same no-op model, interleaved, repeated.

    .venv/bin/python benchmarks/oip_overhead.py [--requests 3000] [--reps 3]

Reports the frontend process's CPU time per request (utime + stime from /proc/PID/stat, the
measure MEASURED.md recommends over raw req/s on a shared machine) and throughput, median
with min and max over the repetitions; saves JSON under benchmarks/results/.
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
    args = ap.parse_args()
    with ClipperProcess() as c:
        c.conn.register_application("bench", "doubles", -1.0, 1_000_000)
        c.conn.deploy_python_closure("bench-noop", 1, "doubles", noop)
        c.conn.link_model_to_app("bench", "bench-noop")
        pid = c.endpoints["pid"]
        vs = variants(c.query_url)
        results: dict = {k: {"cpu_us": [], "rps": []} for k in vs}
        for name, (url, body, headers) in vs.items():  # warm-up
            asyncio.run(run(url, body, headers, 300, args.concurrency))
        for _ in range(args.reps):
            for name, (url, body, headers) in vs.items():
                c0 = cpu_s(pid)
                wall = asyncio.run(run(url, body, headers, args.requests, args.concurrency))
                results[name]["cpu_us"].append((cpu_s(pid) - c0) / args.requests * 1e6)
                results[name]["rps"].append(args.requests / wall)
    print(f"{'variant':<14}{'server CPU us/req (median [min, max])':>40}"
          f"{'req/s (median [min, max])':>32}")
    summary = {}
    for name, r in results.items():
        cpu, rps = r["cpu_us"], r["rps"]
        summary[name] = {"cpu_us_median": statistics.median(cpu), "cpu_us": cpu,
                         "rps_median": statistics.median(rps), "rps": rps}
        print(f"{name:<14}{statistics.median(cpu):>20.0f} [{min(cpu):.0f}, {max(cpu):.0f}]"
              f"{statistics.median(rps):>20.0f} [{min(rps):.0f}, {max(rps):.0f}]")
    base = summary["predict-json"]["cpu_us_median"]
    for name in ("oip-json", "oip-binary"):
        print(f"{name} / predict-json server CPU ratio: "
              f"{summary[name]['cpu_us_median'] / base:.2f}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    out = os.path.join(os.path.dirname(__file__), "results", "oip_overhead.json")
    with open(out, "w") as f:
        json.dump({"args": vars(args), "python": sys.version.split()[0], "results": summary},
                  f, indent=1)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
