"""Triton's perf_analyzer against a Clipper app, beside clipper-bench on the same app.

Starts a Clipper on free ports, deploys a sum model (4 doubles in, one double out; cache off
so that every request reaches the model), sweeps closed-loop concurrency with Triton's
``perf_analyzer`` over HTTP (``--concurrency-range 1:16:2`` by default; the binary comes from
the ``tritonclient==2.41.0`` wheel of the test extra and needs Debian's ``libb64-0d``), then
sweeps the same concurrency levels with ``clipper-bench`` over the same OIP route, and prints
both tables side by side.  Results go to ``benchmarks/results/perf_analyzer.json``.

    make build && .venv/bin/python benchmarks/perf_analyzer.py            # ~1-2 min
    .venv/bin/python benchmarks/perf_analyzer.py --quick                  # a smoke run

The two tools differ in what they count: perf_analyzer's latency is its C++ client's
(``--measurement-interval`` windows until 3 are stable within ``-s`` percent), clipper-bench's
is its Python client's over ``--duration`` seconds per level.  Read the tables as two views of
one server, not as a race between the tools.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from clipper_core.testing import ClipperProcess

HERE = os.path.dirname(os.path.abspath(__file__))
APP = "sum"
INPUT = [1.0, 2.0, 3.0, 4.0]


def perf_analyzer_binary() -> str:
    """The perf_analyzer of this venv, with what it needs to load; fails saying how to get it."""
    exe = shutil.which("perf_analyzer", path=os.path.dirname(sys.executable)) \
        or shutil.which("perf_analyzer")
    if exe is None:
        raise SystemExit("perf_analyzer not found: it comes with tritonclient==2.41.0 "
                         "(`make build` installs the test extra)")
    return exe


def perf_analyzer_env() -> dict:
    """LD_LIBRARY_PATH with the CUDA runtime of the nvidia-cuda-runtime-cu12 wheel."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime as cr
        lib = os.path.join(list(cr.__path__)[0], "lib")
    except ImportError:
        raise SystemExit("perf_analyzer needs libcudart.so.12: pip install "
                         "nvidia-cuda-runtime-cu12 (in the test extra)") from None
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"]
                                    if env.get("LD_LIBRARY_PATH") else "")
    return env


def levels(spec: str) -> list[int]:
    start, end, step = (int(x) for x in spec.split(":"))
    return list(range(start, end + 1, step))


def run_perf_analyzer(query_url: str, spec: str, interval_ms: int, stability: float,
                      max_trials: int, out_csv: str, timeout_s: float = 600,
                      app: str = APP) -> dict:
    """One perf_analyzer sweep of ``app``; {concurrency: row} from its CSV report."""
    host = query_url.split("//", 1)[1]
    cmd = [perf_analyzer_binary(), "-m", app, "-u", host, "-i", "http",
           "--concurrency-range", spec, "--shape", f"input:{len(INPUT)}",
           "--measurement-interval", str(interval_ms), "-s", str(stability),
           "-r", str(max_trials), "-f", out_csv]
    p = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True,
                       timeout=timeout_s)
    if p.returncode != 0 or not os.path.exists(out_csv):
        raise RuntimeError(f"perf_analyzer failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
                           f"{p.stderr[-3000:]}")
    rows = {}
    with open(out_csv) as f:
        for r in csv.DictReader(f):
            rows[int(r["Concurrency"])] = {
                "throughput_rps": float(r["Inferences/Second"]),
                "p50_ms": float(r["p50 latency"]) / 1e3, "p90_ms": float(r["p90 latency"]) / 1e3,
                "p99_ms": float(r["p99 latency"]) / 1e3}
    return {"command": " ".join(cmd[1:]), "stdout": p.stdout, "levels": rows}


def run_clipper_bench(query_url: str, conc: list[int], duration_s: float,
                      out_json: str) -> dict:
    cmd = [os.path.join(os.path.dirname(sys.executable), "clipper-bench"),
           "--url", f"{query_url}/v2/models/{APP}/infer", "--protocol", "oip",
           "--input", json.dumps(INPUT), "--concurrency", ",".join(map(str, conc)),
           "--duration", str(duration_s), "--warmup", "0.5", "--json", out_json, "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"clipper-bench failed ({p.returncode}):\n{p.stderr[-3000:]}")
    with open(out_json) as f:
        d = json.load(f)
    rows = {}
    for lv in d["levels"]:
        lat = lv["latency_ms"]
        rows[lv["concurrency"]] = {"throughput_rps": lv["achieved_rps"], "p50_ms": lat["p50"],
                                   "p90_ms": lat["p90"], "p99_ms": lat["p99"],
                                   "errors": lv["requests"]["errors"],
                                   "generator_cpu_cores": lv["generator"]["cpu_cores"],
                                   "generator_saturated": lv["generator"]["saturated"]}
    return {"command": " ".join(cmd[1:]), "levels": rows}


def table(pa: dict, cb: dict) -> str:
    head = (f"{'conc':>4}  {'perf_analyzer req/s':>19} {'p50 ms':>7} {'p99 ms':>7}   "
            f"{'clipper-bench req/s':>19} {'p50 ms':>7} {'p99 ms':>7}")
    lines = [head]
    for c in sorted(set(pa) | set(cb)):
        a, b = pa.get(c), cb.get(c)
        left = (f"{a['throughput_rps']:>19.1f} {a['p50_ms']:>7.2f} {a['p99_ms']:>7.2f}"
                if a else f"{'-':>19} {'-':>7} {'-':>7}")
        right = (f"{b['throughput_rps']:>19.1f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f}"
                 if b else f"{'-':>19} {'-':>7} {'-':>7}")
        lines.append(f"{c:>4}  {left}   {right}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency-range", default="1:16:2")
    ap.add_argument("--measurement-interval", type=int, default=2000,
                    help="perf_analyzer's window, ms (default 2000)")
    ap.add_argument("--stability", type=float, default=10.0,
                    help="perf_analyzer's -s: allowed deviation, percent (default 10)")
    ap.add_argument("--max-trials", type=int, default=10)
    ap.add_argument("--duration", type=float, default=3.0,
                    help="clipper-bench seconds per level (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="short windows, any deviation accepted: a smoke run")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "perf_analyzer.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.measurement_interval, args.stability, args.max_trials = 300, 1000.0, 5
        args.duration = 0.5
    tmp = tempfile.mkdtemp(prefix="clipper-pa-")
    started = time.time()
    with ClipperProcess(os.path.join(tmp, "state")) as c:
        conn = c.conn
        conn.register_application(APP, "doubles", -1.0, 1_000_000, cache_enabled=False)
        conn.deploy_python_closure(APP, 1, "doubles", lambda xs: [float(x.sum()) for x in xs])
        conn.link_model_to_app(APP, APP)
        try:
            pa = run_perf_analyzer(c.query_url, args.concurrency_range,
                                   args.measurement_interval, args.stability, args.max_trials,
                                   os.path.join(tmp, "pa.csv"))
        except RuntimeError as e:
            print(e, file=sys.stderr)
            print("perf_analyzer found no stable measurement: on a busy machine, allow more "
                  "deviation (--stability 50) or longer windows (--measurement-interval)",
                  file=sys.stderr)
            return 1
        cb = run_clipper_bench(c.query_url, levels(args.concurrency_range), args.duration,
                               os.path.join(tmp, "cb.json"))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"app {APP!r}: 4 doubles in, their sum out, one replica, cache off; "
          f"POST /v2/models/{APP}/infer")
    print(table(pa["levels"], cb["levels"]))
    busy = [c for c, r in sorted(cb["levels"].items()) if r["generator_saturated"]]
    if busy:
        print(f"clipper-bench's load generator was saturated at concurrency {busy}: its "
              "numbers there measure the client (try --workers in clipper-bench)")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    result = {"perf_analyzer": {k: v for k, v in pa.items() if k != "stdout"},
              "clipper_bench": cb, "quick": args.quick, "load_1min": load,
              "started_at": started, "seconds": time.time() - started}
    if not args.quick:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"written to {args.out}")
    missing = set(levels(args.concurrency_range)) - set(pa["levels"])
    if missing:
        print(f"perf_analyzer measured no level {sorted(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
