"""The same closure on the local and the docker backend, side by side in one run.

    .venv/bin/python benchmarks/backends.py [--duration 5] [--reps 3] [--concurrency 8]
                                            [--cold]

Two Clipper frontends, one per backend, each serving the same no-op closure with one replica
(host networking for the container).  Reports, median with min and max over ``--reps``
interleaved repetitions: throughput and p50/p99 latency of a closed loop (clipper-bench's generator), the docker/local
ratio of each, and the time from a deploy call to the first answer of the new version (the
first deploy of a fresh frontend, and later ones).  ``--cold`` first removes the docker
backend's base and runtime images of the current inputs (only when no container uses them)
so that the first docker deploy includes building them; the build time and image size are
printed.  Saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time

from _load import closed_level, med, save
from clipper_core.testing import ClipperProcess, remove_docker_containers


def noop(inputs):
    return [0.0 for _ in inputs]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
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
    res: dict = {b: {"answers_per_s": [], "p50_ms": [], "p99_ms": [], "deploy_s": []}
                 for b in backends}
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
        body = '{"input": [1.0, 2.0, {{i}}.0]}'
        for _ in range(args.reps):
            for b, c in clippers.items():
                r = asyncio.run(closed_level(f"{c.query_url}/bench/predict", args.concurrency,
                                             body_template=body, duration_s=args.duration))
                assert r["errors"] == 0 and r["defaults"] == 0, r
                for k in ("answers_per_s", "p50_ms", "p99_ms"):
                    res[b][k].append(r[k])
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
          f"{args.duration:g} s x {args.reps} reps, median (min-max)")
    print(f"{'':<26}{'local':>28}{'docker':>28}{'docker/local':>14}")
    for k, what in (("answers_per_s", "throughput (req/s)"), ("p50_ms", "p50 latency (ms)"),
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
    out = save("backends", {"args": vars(args), "results": res})
    print(f"saved {out}")


if __name__ == "__main__":
    main()
