"""Batching gain: no batching (maximum 1) vs a fixed maximum of 32 vs AIMD, in one run.

A real Clipper (``clipper_core.testing.ClipperProcess``) serves three copies of one model
whose batch costs 1 ms + 0.05 ms per item (a sleep: the cost of an accelerator, not of this
machine's CPUs), one replica each, configured ``batch_size`` 1, 32 and -1 (AIMD).  clipper-bench's
load generator drives each in a closed loop at one concurrency for a few seconds; the three run
interleaved, in a rotating order, for several rounds (the generator runs in its own process
on the same 2-core machine, so it is part of what is measured).  Reported per configuration: prediction
throughput (answers that are not the default), all answers per second (a shed query is
answered at once, and a closed-loop client sends its next one at once), client-side p50/p99
latency of all answers,
default share, mean batch size, mean and p99 batch latency (RPC round trip) and the Clipper
process's CPU time per answer, as median (min-max) over the rounds; and the throughput ratios against batch size 1,
taken per round.

Run: ``python benchmarks/batching.py [--concurrency 64] [--duration 4] [--rounds 3]``.
Saves JSON under ``benchmarks/results/``.  Loopback runs on a shared 2-core machine swing
1.5-2x between repetitions: compare within one run, read the ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys

import numpy as np

from _load import closed_level, med, save
from clipper_core.testing import ClipperProcess

CONFIGS = {"batch-1": 1, "fixed-32": 32, "aimd": -1}


def linear_cost(inputs):
    """The benchmark model: 1 ms + 0.05 ms per item, answers x[0] + 1."""
    import time

    time.sleep(0.001 + 0.00005 * len(inputs))
    return [float(x[0]) + 1 for x in inputs]


async def drive(url: str, concurrency: int, warmup_s: float, duration_s: float,
                server_pid: int) -> dict:
    """Closed loop: ``concurrency`` users of clipper-bench's generator, each input distinct,
    and the server's CPU time per answer (``_load.closed_level``)."""
    res = await closed_level(url, concurrency, body_template='{"input": [{{i}}.0]}',
                             warmup_s=warmup_s, duration_s=duration_s,
                             pids={"server": server_pid})
    res["server_cpu_us_per_answer"] = res.pop("server_cpu_us")
    res["client_cpu_us_per_answer"] = res.pop("client_cpu_us")
    return res


def batch_stats(conn, model: str, before: dict) -> dict:
    after = conn.get_batching(model, recent_batches=True)
    b0, b1 = before["stats"]["batch_size"], after["stats"]["batch_size"]
    count = b1["count"] - b0["count"]
    rpc = after["stats"]["rpc_s"]["sum"] - before["stats"]["rpc_s"]["sum"]
    recent = after["recent_batches"][-count:] if count else []
    lats = [lat for _, lat in recent]
    return {
        "batches": count,
        "mean_batch": (b1["sum"] - b0["sum"]) / count if count else 0.0,
        "mean_batch_ms": rpc / count * 1e3 if count else None,
        "p99_batch_ms": float(np.percentile(lats, 99)) * 1e3 if lats else None,
        "budget_ms": after["budget_s"] * 1e3,
        "aimd_size": [r["batch_size"] for r in after["replicas"].values()],
        "shed": after["shed"] - before["shed"],
        "rpc_timeouts": after["timeouts"] - before["timeouts"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)

    runs: list[dict] = []
    with ClipperProcess() as clipper:
        conn = clipper.conn
        info = conn.server_info()
        for name, size in CONFIGS.items():
            app = model = f"bench-{name}"
            conn.register_application(app, "doubles", -1.0, int(args.slo_ms * 1000),
                                     cache_enabled=False)
            conn.deploy_python_closure(model, 1, "doubles", linear_cost, batch_size=size)
            conn.link_model_to_app(app, model)
        names = list(CONFIGS)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                model = f"bench-{name}"
                before = conn.get_batching(model)
                res = asyncio.run(drive(f"{clipper.query_url}/{model}/predict",
                                       args.concurrency, args.warmup, args.duration,
                                       clipper.proc.pid))
                res.update(batch_stats(conn, model, before))
                res.update({"config": name, "round": r})
                runs.append(res)
                print(f"round {r} {name:9} {res['throughput']:8.0f} pred/s  "
                      f"p99 {res['p99_ms']:6.1f} ms  default {res['default_share']:5.1%}  "
                      f"mean batch {res['mean_batch']:5.1f}", flush=True)

    by = {n: [x for x in runs if x["config"] == n] for n in CONFIGS}
    print(f"\nbatching: model 1 ms + 0.05 ms/item, concurrency {args.concurrency}, SLO "
          f"{args.slo_ms:g} ms, {args.rounds} rounds x {args.duration:g} s, interleaved; "
          "median (min-max)")
    cols = [("pred/s", "throughput"), ("answers/s", "answers_per_s"), ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("default %", None), ("mean batch", "mean_batch"), ("batch ms", "mean_batch_ms"),
            ("p99 batch ms", "p99_batch_ms"),
            ("srv CPU us/answer", "server_cpu_us_per_answer")]
    print(f"{'config':9} " + " ".join(f"{c:>18}" for c, _ in cols))
    for n, rs in by.items():
        cells = []
        for _, key in cols:
            if key is None:
                cells.append(med([x["default_share"] * 100 for x in rs]))
            else:
                cells.append(med([x[key] for x in rs]))
        print(f"{n:9} " + " ".join(f"{c:>18}" for c in cells))
    ratios = {}
    for n in ("fixed-32", "aimd"):
        rr = [a["throughput"] / b["throughput"] for a, b in zip(by[n], by["batch-1"])
              if b["throughput"] > 0]
        ratios[n] = rr
        print(f"throughput {n} / batch-1: {med(rr)}x")
    aimd_p99 = statistics.median(x["p99_ms"] for x in by["aimd"])
    print(f"AIMD p99 {aimd_p99:.1f} ms against the {args.slo_ms:g} ms SLO: "
          f"{'under' if aimd_p99 < args.slo_ms else 'OVER'}")
    path = save("batching", {"args": vars(args), "runs": runs, "ratios_vs_batch_1": ratios,
                             "server": info}, args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
