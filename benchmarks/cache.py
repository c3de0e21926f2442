"""Prediction cache benchmark: cache hits against misses through a real Clipper, and the memory
the cache holds after a million distinct inserts against its budget.

    .venv/bin/python benchmarks/cache.py            # ~2 minutes; JSON to benchmarks/results/

1. HTTP: a real Clipper (``ClipperProcess``) with a no-op model.  clipper-bench's closed-loop
   generator at a fixed concurrency sends, for the same app, either one input over and over (hits after
   the first) or a new input every time (misses); a third phase sends the same misses to an app
   with the cache switched off (the baseline: what the cache costs a miss).  The phases are
   interleaved and repeated; each reports client-side p50/p99 latency, throughput, and the CPU
   time per request of the Clipper process, the model container and the client (from
   /proc/PID/stat, steadier than wall-clock numbers on a shared machine).
2. Memory: in a fresh child process, 1,000,000 distinct inserts (keys as the query path builds
   them: prefix + 10 doubles) into a cache with the default 64 MiB budget; RSS is sampled every
   100,000 inserts.  Plus put/get cost of the compiled core against its pure twin.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def noop(inputs):
    return [float(x[0]) for x in inputs]


# ---------------------------------------------------------------------------- HTTP phase
def http_bench(args) -> dict:
    import uvloop

    from _load import closed_level
    from clipper_core.testing import ClipperProcess

    with ClipperProcess(extra_args=("--log-level", "WARNING")) as cp:
        c = cp.conn
        c.register_application("bench", "doubles", -1.0, 1_000_000)
        c.deploy_python_closure("noop", 1, "doubles", noop)
        c.link_model_to_app("bench", "noop")
        # the same model behind an app without the cache: the baseline for the miss path
        c.register_application("bench-nocache", "doubles", -1.0, 1_000_000, cache_enabled=False)
        c.link_model_to_app("bench-nocache", "noop")
        url = f"{cp.query_url}/bench/predict"
        urls = {"hit": url, "miss": url, "nocache": f"{cp.query_url}/bench-nocache/predict"}
        server_pid = cp.proc.pid
        model_pid = next(r["pid"] for r in c.get_all_model_replicas(verbose=True)
                         if r["model_name"] == "noop")
        same = '{"input": [' + ", ".join(["0.5"] * 10) + "]}"
        salt = [0]

        def distinct():  # never seen before, across phases and rounds: a salt per call
            salt[0] += 1
            return '{"input": [{{i}}.0, ' + f"{salt[0]}.0" + ", 0.5" * 8 + "]}"

        phases = {"hit": lambda: same, "miss": distinct, "nocache": distinct}
        pids = {"server": server_pid, "model": model_pid}

        def load(name: str, cc: int, warmup_s: float, duration_s: float) -> dict:
            return uvloop.run(closed_level(urls[name], cc, body_template=phases[name](),
                                           warmup_s=warmup_s, duration_s=duration_s,
                                           pids=pids))

        for name in PHASES:  # warm-up (the hit phase's first query fills the entry)
            load(name, max(args.concurrency), 0.0, 1.0)
        runs: dict[str, dict] = {str(cc): {name: [] for name in PHASES}
                                 for cc in args.concurrency}
        for r in range(args.rounds):
            for cc in args.concurrency:
                order = PHASES[r % 3:] + PHASES[:r % 3]
                for name in order:
                    res = load(name, cc, 0.3, args.duration)
                    res["round"] = r
                    runs[str(cc)][name].append(res)
                    print(f"  round {r} c={cc:<3} {name:7}: {res['answers_per_s']:6.0f} req/s  "
                          f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  "
                          f"CPU us/req: server {res['server_cpu_us']:4.0f} "
                          f"model {res['model_cpu_us']:4.0f} "
                          f"client {res['client_cpu_us']:4.0f}  "
                          f"hit share {res['cache_hit_share']:.3f}  errors {res['errors']}",
                          flush=True)
        stats = c.server_info()["cache"]
    return {"runs": runs, "server_cache_stats": stats}


PHASES = ("hit", "miss", "nocache")


def summarize(runs: list, key: str) -> dict:
    vals = [r[key] for r in runs]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


# ---------------------------------------------------------------------------- memory phase
def rss_child(output: str, n: int, budget: int) -> None:
    """Runs in a fresh interpreter: n distinct inserts, RSS sampled every n/10."""
    import gc

    import numpy as np

    from clipper_core.cache import PredictionCache, key_prefix

    prefix = key_prefix("bench", "1", "doubles")
    base = np.arange(10, dtype=np.float64)
    make = {"float": lambda i: float(i) * 0.5,
            "list10": lambda i: [float(i) * 0.1 + j for j in range(10)]}[output]
    gc.collect()
    c = PredictionCache(budget)
    rss0 = rss_bytes()
    samples = []
    step = n // 10
    t0 = time.perf_counter()
    for i in range(n):
        base[0] = i
        c.put(prefix + base.tobytes(), make(i), 0.0)
        if (i + 1) % step == 0:
            samples.append({"inserts": i + 1, "rss_growth": rss_bytes() - rss0,
                            "bytes_used": c.bytes_used, "entries": c.entries})
    elapsed = time.perf_counter() - t0
    print(json.dumps({"output": output, "inserts": n, "budget": budget, "rss_before": rss0,
                      "rss_after": rss_bytes(), "samples": samples, "evictions": c.evictions,
                      "entries": c.entries, "bytes_used": c.bytes_used,
                      "insert_us": elapsed / n * 1e6}))


def op_costs() -> dict:
    """put+get cost per operation, compiled against pure, same keys, same process."""
    from clipper_core import _cache_c, _cache_py

    keys = [b"bench\x001\x00doubles\x00" + i.to_bytes(8, "little") * 10 for i in range(50_000)]
    out = {}
    for name, m in (("compiled", _cache_c), ("pure", _cache_py)):
        best_put = best_get = float("inf")
        for _ in range(5):
            c = m.PredictionCache(4 * 1024 * 1024)  # ~10k entries: evictions happen
            t0 = time.perf_counter()
            for k in keys:
                c.put(k, 1.0, 0.0)
            t1 = time.perf_counter()
            for k in keys:
                c.get(k, 0.0, -1.0)
            t2 = time.perf_counter()
            best_put = min(best_put, (t1 - t0) / len(keys))
            best_get = min(best_get, (t2 - t1) / len(keys))
        out[name] = {"put_us": best_put * 1e6, "get_us": best_get * 1e6}
    out["speedup_put"] = out["pure"]["put_us"] / out["compiled"]["put_us"]
    out["speedup_get"] = out["pure"]["get_us"] / out["compiled"]["get_us"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                    help="closed-loop concurrencies to run (default: 1 and 16)")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inserts", type=int, default=1_000_000)
    ap.add_argument("--budget", type=int, default=64 * 1024 * 1024)
    ap.add_argument("--rss-child", choices=["float", "list10"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(RESULTS, "cache.json"))
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.inserts, args.budget)
        return 0

    import clipper_core.cache as cache

    if not cache.COMPILED:
        print("warning: running the PURE cache (CLIPPER_PUREPYTHON is set)", file=sys.stderr)
    result = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
              "config": vars(args), "compiled_cache": cache.COMPILED}
    print(f"HTTP: hits vs misses, app 'bench', no-op model, closed loop at concurrency "
          f"{' and '.join(map(str, args.concurrency))}, {args.rounds} rounds x "
          f"{args.duration:g} s per phase (interleaved)")
    h = http_bench(args)
    result["http"] = h
    for cc, runs in h["runs"].items():
        print(f"\nconcurrency {cc}:\n{'':7} {'req/s':>20} {'p50 ms':>20} {'p99 ms':>20} "
              f"{'server CPU us/req':>20}")
        for name in PHASES:
            cells = []
            for key, fmt in (("answers_per_s", "{:.0f}"), ("p50_ms", "{:.2f}"),
                             ("p99_ms", "{:.2f}"), ("server_cpu_us", "{:.0f}")):
                st = summarize(runs[name], key)
                cells.append(f"{fmt.format(st['median'])} ({fmt.format(st['min'])}-"
                             f"{fmt.format(st['max'])})")
            print(f"{name:7} " + " ".join(f"{c:>20}" for c in cells))
        for a, b in (("hit", "miss"), ("miss", "nocache")):
            ratios = {k: summarize(runs[a], k)["median"] / summarize(runs[b], k)["median"]
                      for k in ("answers_per_s", "p50_ms", "p99_ms", "server_cpu_us")}
            result.setdefault("median_ratios", {}).setdefault(cc, {})[f"{a}/{b}"] = ratios
            print(f"{a}/{b} ratio of medians: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print("(median of the rounds, min-max in parentheses; 'nocache' = the same misses on an app "
          "with cache_enabled=false)")
    print(f"server cache counters: {h['server_cache_stats']}")

    print(f"\nMemory: {args.inserts:,} distinct inserts, budget {args.budget / 2**20:g} MiB "
          "(fresh child process each)")
    result["memory"] = []
    for output in ("float", "list10"):
        p = subprocess.run([sys.executable, __file__, "--rss-child", output, "--inserts",
                            str(args.inserts), "--budget", str(args.budget)],
                           capture_output=True, text=True, check=True)
        m = json.loads(p.stdout)
        result["memory"].append(m)
        growth = [s["rss_growth"] / 2**20 for s in m["samples"]]
        print(f"  output {output:6}: RSS growth {m['samples'][-1]['rss_growth'] / 2**20:6.1f} MiB "
              f"= {m['samples'][-1]['rss_growth'] / m['budget']:.2f}x budget; "
              f"entries {m['entries']:,}, evictions {m['evictions']:,}, "
              f"bytes_used {m['bytes_used'] / 2**20:.1f} MiB, {m['insert_us']:.2f} us/insert")
        print("    RSS growth (MiB) every 10%: " + " ".join(f"{g:.0f}" for g in growth))

    costs = op_costs()
    result["op_costs"] = costs
    print(f"\nCore cost per op (50k keys, 4 MiB budget, best of 5): compiled put "
          f"{costs['compiled']['put_us']:.2f} us, get {costs['compiled']['get_us']:.2f} us; pure "
          f"put {costs['pure']['put_us']:.2f} us, get {costs['pure']['get_us']:.2f} us "
          f"(compiled {costs['speedup_put']:.1f}x / {costs['speedup_get']:.1f}x faster)")
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nsaved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
