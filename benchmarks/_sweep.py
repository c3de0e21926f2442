"""The overhead scenario's closed-loop sweep: Clipper against a bare aiohttp server, same run.

For each concurrency (``[sweep] concurrency``, e.g. 1, 16, 64) and each repetition, every
variant is driven by ``wrk`` (a C load generator: a Python client would be the bottleneck
long before the servers) for ``duration_s`` after ``warmup_s``, variants interleaved and
rotated per repetition:

* ``bare``: the aiohttp + uvloop + orjson server of ``_baselines.py`` that parses the body
  and answers a fixed Clipper-shaped JSON (no model, one process);
* each ``[[sweep.models]]`` entry deployed on one Clipper (one replica, cache off).

Per measurement: throughput, p50 and p99 (wrk's), and the CPU time per query of the server
side read from ``/proc/PID/stat`` (frontend + replica for Clipper; the one process for the
bare server): the figure that survives a noisy, shared machine best. Ratios are taken
against the bare server measured at the same concurrency in the same repetition.

Run on its own (a Clipper of its own, the scenario's ``[sweep]`` table):

    .venv/bin/python benchmarks/_sweep.py benchmarks/scenarios/overhead.toml [--quick]

or as part of ``benchmarks/run.py benchmarks/scenarios/overhead.toml``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _baselines  # noqa: E402
import _models  # noqa: E402
from _models import ScenarioError  # noqa: E402

from clipper_core.testing import ClipperProcess  # noqa: E402

INPUT_TYPE = "doubles"
_TICK = os.sysconf("SC_CLK_TCK")

# wrk's Lua hook: POST the body, print one JSON line with what we need when done
_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d,\\"status\\":%%d," ..
    "\\"p50_us\\":%%d,\\"p99_us\\":%%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise ScenarioError("the overhead sweep needs wrk: run `make bench-deps` (it installs the "
                            "Debian packages of .ci/bench-packages.txt, wrk among them)")
    return path


def wrk(url: str, body: str, conns: int, duration_s: float, script_dir: str) -> dict[str, Any]:
    script = os.path.join(script_dir, "post.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(_LUA % json.dumps(body))
    threads = 1 if conns < 4 else 2
    # wrk takes whole seconds
    out = subprocess.run([wrk_binary(), f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration_s))}s", "--timeout", "5s",
                          "-s", script, url], capture_output=True, text=True, timeout=duration_s + 30)
    m = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    return json.loads(m.group(1))


def measure(url: str, body: str, conns: int, pids: list[int], duration_s: float, warmup_s: float,
            script_dir: str) -> dict[str, Any]:
    if warmup_s >= 0.5:
        wrk(url, body, conns, warmup_s, script_dir)
    before = [cpu_s(p) for p in pids]
    r = wrk(url, body, conns, duration_s, script_dir)
    after = [cpu_s(p) for p in pids]
    n = r["requests"]
    secs = r["duration_us"] / 1e6
    cpu = [a - b for a, b in zip(after, before)]
    by_process = [1e6 * c / n if n else None for c in cpu]
    return {"rps": n / secs if secs > 0 else 0.0, "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "requests": n, "errors": r["errors"] + r["status"],
            "cpu_us_per_query": 1e6 * sum(cpu) / n if n else None,
            "cpu_us_per_query_by_process": by_process,
            # the first process is the frontend (or the bare server), the second the replica
            "cpu_us_frontend": by_process[0] if by_process else None,
            "cpu_us_replica": by_process[1] if len(by_process) > 1 else None}


def _spread(vs: list[float | None], fmt: str) -> str:
    vs = [v for v in vs if v is not None]
    if not vs:
        return "-"
    med = format(statistics.median(vs), fmt)
    return med if len(vs) == 1 else f"{med} ({format(min(vs), fmt)}-{format(max(vs), fmt)})"


def _median(vs: list[float | None]) -> float | None:
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None


def run_sweep(sweep: dict[str, Any], clipper: ClipperProcess, slo_ms: float,
              log: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """Deploy the sweep's models on ``clipper``, measure, return (table text, results)."""
    concurrency = [int(c) for c in sweep.get("concurrency", [1, 16, 64])]
    reps = int(sweep.get("repetitions", 3))
    duration = float(sweep.get("duration_s", 3.0))
    warmup = float(sweep.get("warmup_s", 1.0))
    specs = sweep.get("models") or []
    if not specs:
        raise ScenarioError("[sweep] needs at least one [[sweep.models]] table")
    wrk_binary()
    conn = clipper.conn
    targets: list[tuple[str, str, str, list[int]]] = []  # (name, url, body, pids)
    for spec in specs:
        name = str(spec.get("name") or spec.get("kind"))
        fn, x = _models.build({k: v for k, v in spec.items() if k != "name"})
        app = "swp-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        conn.register_application(app, INPUT_TYPE, -1.0, int(slo_ms * 1000), cache_enabled=False)
        conn.deploy_python_closure(app, 1, INPUT_TYPE, fn, batch_size=int(spec.get("batch_size", -1)))
        conn.link_model_to_app(app, app)
        status, answer = clipper.predict(app, {"input": x})
        if status != 200 or answer.get("default") is not False:
            raise RuntimeError(f"app {app} does not answer with its model: {status} {answer}")
        pids = [c["pid"] for c in conn.get_all_model_replicas(verbose=True) if c.get("model_name") == app]
        if len(pids) != 1:
            raise RuntimeError(f"expected one replica of {app}, found {pids}")
        targets.append((name, f"{clipper.query_url}/{app}/predict", json.dumps({"input": x}),
                        [clipper.proc.pid, pids[0]]))
    runs: list[dict[str, Any]] = []
    with _baselines.HttpFloor() as bare, tempfile.TemporaryDirectory(prefix="clipper-sweep-") as tmp:
        variants = [("bare", bare.url, json.dumps({"input": [0.0] * 10}), [bare.proc.pid]), *targets]
        for rep in range(reps):
            for c in concurrency:
                k = rep % len(variants)
                for name, url, body, pids in variants[k:] + variants[:k]:
                    d = os.path.join(tmp, re.sub(r"\W+", "_", name))
                    os.makedirs(d, exist_ok=True)
                    r = measure(url, body, c, pids, duration, warmup, d)
                    r.update(variant=name, concurrency=c, rep=rep, loadavg=os.getloadavg()[0])
                    runs.append(r)
                    log(f"[sweep] rep {rep + 1}/{reps} c={c} {name}: {r['rps']:.0f} req/s, p50 "
                        f"{r['p50_us']} us, {r['cpu_us_per_query'] or 0:.0f} us CPU/query, load {r['loadavg']:.2f}")
    names = [v[0] for v in [("bare",)] + targets]
    for r in runs:  # ratios against the bare server of the same repetition and concurrency
        base = next(b for b in runs if b["variant"] == "bare" and b["rep"] == r["rep"]
                    and b["concurrency"] == r["concurrency"])
        r["rps_ratio"] = r["rps"] / base["rps"] if base["rps"] else None
        r["p50_over_bare_us"] = r["p50_us"] - base["p50_us"]
    header = ["variant", *(f"c={c} {col}" for c in concurrency for col in ("req/s", "x bare"))]
    rows, cpu_rows = [], []
    summary: dict[str, Any] = {}
    for name in names:
        row = [name]
        crow = [name]
        for c in concurrency:
            mine = [r for r in runs if r["variant"] == name and r["concurrency"] == c]
            row += [_spread([r["rps"] for r in mine], ".0f"), _spread([r["rps_ratio"] for r in mine], ".2f")]
            front = _median([r["cpu_us_frontend"] for r in mine])
            replica = _median([r["cpu_us_replica"] for r in mine])
            crow += [_spread([r["p50_us"] for r in mine], ".0f"),
                     _spread([r["cpu_us_per_query"] for r in mine], ".0f"),
                     f"{front or 0:.0f} / {replica:.0f}" if replica is not None else f"{front or 0:.0f}"]
            summary.setdefault(name, {})[str(c)] = {
                k: _median([r[k] for r in mine])
                for k in ("rps", "rps_ratio", "p50_us", "p50_over_bare_us", "p99_us", "cpu_us_per_query",
                          "cpu_us_frontend", "cpu_us_replica")}
            summary[name][str(c)]["errors"] = sum(r["errors"] for r in mine)
        rows.append(row)
        cpu_rows.append(crow)
    from run import render  # the runner's table renderer (imported late: run imports this module)

    text = [f"closed-loop sweep (wrk), {reps} x {duration:g} s per measurement after {warmup:g} s warm-up, "
            "interleaved; median (min-max) over repetitions; 'x bare' = throughput / the bare aiohttp "
            "server's in the same repetition",
            render(header, rows), "",
            "p50 latency (us) and server CPU per query (us, from /proc/PID/stat; CPU/q = frontend + replica, "
            "then medians of each apart)",
            render(["variant", *(f"c={c} {col}" for c in concurrency
                                 for col in ("p50", "CPU/q", "front / replica"))], cpu_rows)]
    errors = sum(r["errors"] for r in runs)
    if errors:
        text.append(f"WARNING: {errors} requests failed or answered non-2xx (see the results file)")
    return "\n".join(text), {"summary": summary, "runs": runs}


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="the overhead scenario's closed-loop sweep on its own")
    ap.add_argument("scenario", nargs="?", default=os.path.join(HERE, "scenarios", "overhead.toml"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="write the results JSON here")
    ns = ap.parse_args(argv)
    with open(ns.scenario, "rb") as f:
        doc = tomllib.load(f)
    sweep = dict(doc["sweep"])
    if ns.quick:
        sweep.update(sweep.pop("quick", {}))
    sweep.pop("quick", None)
    t0 = time.monotonic()
    load = os.getloadavg()
    with ClipperProcess() as clipper:
        text, detail = run_sweep(sweep, clipper, float(doc.get("slo_ms", 1000)),
                                 lambda m: print(f"{time.monotonic() - t0:6.1f}s {m}", file=sys.stderr, flush=True))
    print(text)
    print(f"load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs")
    if ns.out:
        with open(ns.out, "w") as f:
            json.dump(detail, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
