"""The same closure on the local and the docker backend, side by side in one run.

    .venv/bin/python benchmarks/backends.py [--requests 3000] [--reps 3] [--concurrency 8]
                                            [--cold]

Two Clipper frontends, one per backend, each serving the same no-op closure with one replica
(host networking for the container).  Reports, median with min and max over ``--reps``
interleaved repetitions: throughput and p50/p99 latency of a closed loop, the docker/local
ratio of each, and the time from a deploy call to the first answer of the new version (the
first deploy of a fresh frontend, and later ones).  ``--cold`` first removes the docker
backend's base and runtime images of the current inputs (only when no container uses them)
so that the first docker deploy includes building them; the build time and image size are
printed.  Saves JSON under benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import aiohttp
import numpy as np

from clipper_core.testing import ClipperProcess, remove_docker_containers


def noop(inputs):
    return [0.0 for _ in inputs]


async def closed_loop(url: str, n: int, concurrency: int) -> tuple[float, list]:
    body = json.dumps({"input": [1.0, 2.0, 3.0]}).encode()
    headers = {"Content-Type": "application/json"}
    left = n
    lat: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                out = await r.json()
                assert r.status == 200 and not out["default"], out
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), lat


def deploy_to_answer(c: ClipperProcess, version: int) -> float:
    """Seconds from the deploy call to the new version's first answer."""
    from clipper_core.admin import ClipperConnection

    t0 = time.perf_counter()
    # a cold deploy waits for the image build (minutes on a loaded machine)
    ClipperConnection(c.management_url, timeout_s=1800).deploy_python_closure(
        "bench-noop", version, "doubles", noop, ready_timeout_s=60)
    if version == 1:
        c.conn.link_model_to_app("bench", "bench-noop")
    status, body = c.predict("bench", {"input": [1.0], "version": str(version)})
    assert status == 200 and not body["default"], body
    return time.perf_counter() - t0


def remove_images() -> None:
    """The base and runtime images of the current inputs (built again on first use)."""
    from clipper_core.containers import images
    from clipper_core.containers.docker import connect

    client = connect()
    base = images.base_tag()
    for tag in (images.runtime_tag(base), base):
        subprocess.run(["docker", "rmi", tag], capture_output=True)
    client.close()


def med(xs: list) -> str:
    return f"{statistics.median(xs):.4g} [{min(xs):.4g}, {max(xs):.4g}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--deploys", type=int, default=3, help="warm deploys per backend")
    ap.add_argument("--cold", action="store_true",
                    help="rebuild the docker images first (the first docker deploy builds)")
    args = ap.parse_args()
    if args.cold:
        remove_images()
    backends = ("local", "docker")
    clippers = {b: ClipperProcess(extra_args=("--backend", b), start_timeout_s=60)
                for b in backends}
    res: dict = {b: {"rps": [], "p50_ms": [], "p99_ms": [], "deploy_s": []} for b in backends}
    try:
        for b, c in clippers.items():
            c.start()
            c.conn.register_application("bench", "doubles", -1.0, 1_000_000,
                                        cache_enabled=False)
            res[b]["first_deploy_s"] = deploy_to_answer(c, 1)
            if b == "docker" and args.cold:
                from clipper_core.containers import images
                from clipper_core.containers.docker import connect

                res[b]["builds"] = [line.split("clipper.container: ")[-1]
                                    for line in c.log().splitlines() if "built the " in line]
                cl = connect()
                res[b]["image_mb"] = cl.images.get(
                    images.runtime_tag(images.base_tag())).attrs["Size"] / 1e6
                cl.close()
        for b, c in clippers.items():  # warm-up
            asyncio.run(closed_loop(f"{c.query_url}/bench/predict", 300, args.concurrency))
        for _ in range(args.reps):
            for b, c in clippers.items():
                rps, lat = asyncio.run(closed_loop(f"{c.query_url}/bench/predict",
                                                   args.requests, args.concurrency))
                res[b]["rps"].append(rps)
                res[b]["p50_ms"].append(float(np.percentile(lat, 50)) * 1e3)
                res[b]["p99_ms"].append(float(np.percentile(lat, 99)) * 1e3)
        for v in range(2, 2 + args.deploys):
            for b, c in clippers.items():
                res[b]["deploy_s"].append(deploy_to_answer(c, v))
                c.conn.set_model_version("bench-noop", 1)
                c.conn.delete_versioned_model("bench-noop", v)
    finally:
        for c in clippers.values():
            c.stop()
            remove_docker_containers(c.state_dir)
            c.close()
    print(f"load: {os.getloadavg()[0]:.1f} (1 min average), concurrency {args.concurrency}, "
          f"{args.requests} requests x {args.reps} reps, median [min, max]")
    print(f"{'':<26}{'local':>28}{'docker':>28}{'docker/local':>14}")
    for k, what in (("rps", "throughput (req/s)"), ("p50_ms", "p50 latency (ms)"),
                    ("p99_ms", "p99 latency (ms)"), ("deploy_s", "deploy to answer, warm (s)")):
        ratio = statistics.median(res["docker"][k]) / statistics.median(res["local"][k])
        print(f"{what:<26}{med(res['local'][k]):>28}{med(res['docker'][k]):>28}{ratio:>14.2f}")
    print(f"{'first deploy to answer (s)':<26}{res['local']['first_deploy_s']:>28.2f}"
          f"{res['docker']['first_deploy_s']:>28.2f}"
          + ("   (docker: images built first)" if args.cold else ""))
    if "image_mb" in res["docker"]:
        print(f"runtime image size: {res['docker']['image_mb']:.0f} MB")
        for line in res["docker"].get("builds", []):
            print(line)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "backends.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"args": vars(args), "python": sys.version.split()[0],
                   "load_1min": os.getloadavg()[0], "results": res}, f, indent=1)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
