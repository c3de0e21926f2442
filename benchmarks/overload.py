#!/usr/bin/env python
"""Overload from outside: Clipper under an open-loop load generator, one table per run.

    make bench-deps                                   # oha (cargo) + scikit-learn
    .venv/bin/python benchmarks/overload.py           # benchmarks/scenarios/overload.toml
    .venv/bin/python benchmarks/overload.py --quick   # a smoke run (seconds per row)

Each ``[[rows]]`` table of the scenario deploys its model in a fresh Clipper (SLO ``slo_ms``,
default output -1, cache off) and drives it with ``oha`` in open loop (``-q RATE
--latency-correction``: latency counts from when a request was due, so queueing in the
client, the kernel or the server is all in it) at ``rate_x`` times the row's capacity: a
number (analytic), or ``"saturation"``, the rate the frontend answers with
``saturation_connections`` closed-loop connections, measured first in the same process.

Per row: the share of all answers (predictions, defaults, refusals) within SLO + slack, p50
and p99 of all answers, **goodput** (predictions answered within SLO + slack per second; oha
keeps each answer's size, and a default is tens of bytes longer than a prediction), the default
and refusal shares (from the server's counters), and the p50 of ``after_queries`` single
queries sent one at a time right after the overload (does Clipper recover at once?).
Percentiles are numpy's (linear interpolation) over oha's per-request records.

The machine's load average is printed with the table: on a shared machine loopback figures
swing 1.5-2x; rerun on a quiet one to quote them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _models  # noqa: E402
from _baselines import need, nginx_conf  # noqa: E402
from _sweep import cpu_s  # noqa: E402

from clipper_core.testing import (ClipperProcess, RedisServer, free_port,  # noqa: E402
                                  frontends, post_json, wait_for)

SCENARIO = os.path.join(HERE, "scenarios", "overload.toml")
RESULTS = os.path.join(HERE, "results", "scenarios")
OHA_HINT = "oha is not installed: run `make bench-deps` (or `cargo install oha --locked`)"
DEFAULT_OUTPUT = -1.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_oha() -> str:
    path = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if not os.access(path, os.X_OK):
        raise SystemExit(OHA_HINT)
    return path


def oha(url: str, body: bytes, *, duration_s: float, connections: int,
        rate: float | None) -> dict[str, Any]:
    """Run oha; returns its JSON summary plus ``latencies`` (s, every answered request,
    corrected for coordinated omission in open loop) and ``statuses``."""
    with tempfile.TemporaryDirectory(prefix="oha-") as tmp:
        db = os.path.join(tmp, "oha.db")
        bodyf = os.path.join(tmp, "body.json")
        with open(bodyf, "wb") as f:
            f.write(body)
        cmd = [find_oha(), "--no-tui", "--output-format", "json", "-z", f"{duration_s}s",
               "-c", str(connections), "-m", "POST", "-T", "application/json", "-D", bodyf,
               "--db-url", db]
        if rate is not None:
            cmd += ["-q", f"{rate:g}", "--latency-correction"]
        out = subprocess.run(cmd + [url], capture_output=True, text=True,
                             timeout=duration_s + 120)
        if out.returncode != 0:
            raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
        summary = json.loads(out.stdout)
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT start, start_latency_correction, end, status, "
                               "len_bytes FROM oha").fetchall()
        finally:
            con.close()
    lat = []
    sizes = []
    statuses: dict[int, int] = {}
    for start, corrected, end, status, size in rows:
        t0 = corrected if (rate is not None and corrected is not None) else start
        lat.append(max(0.0, end - t0))  # a latency is never negative
        sizes.append(size if status == 200 else -1)
        statuses[status] = statuses.get(status, 0) + 1
    summary["latencies"] = np.asarray(lat, dtype=np.float64)
    summary["sizes"] = np.asarray(sizes, dtype=np.int64)
    summary["statuses"] = statuses
    return summary


def measured_oha(url: str, body: bytes, *, duration_s: float, connections: int, rate: float,
                 pids: list[int]) -> tuple[dict[str, Any], float, float | None, float]:
    """:func:`oha`, and what it cost: ``(results, wall s, the server processes' CPU cores
    (``pids``; None without them), oha's CPU cores)``: the server's CPU over the load's
    ``duration_s`` (it idles while oha writes its records at the end), oha's over the wall
    time, records included."""
    server0 = sum(cpu_s(p) for p in pids)
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    res = oha(url, body, duration_s=duration_s, connections=connections, rate=rate)
    elapsed = time.monotonic() - t0
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = (sum(cpu_s(p) for p in pids) - server0) / duration_s if pids else None
    gen = (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) / elapsed
    return res, elapsed, server, gen


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nginx's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):  # gone meanwhile
                pass
    return out


@contextlib.contextmanager
def clippers(n: int):
    """One Clipper, or ``n`` frontends of one cluster (state in a Redis of their own) sharing
    one query port with ``--reuse-port``: the kernel spreads the connections over them."""
    if n <= 1:
        with ClipperProcess() as c:
            yield [c]
        return
    with RedisServer() as redis_server, frontends(
            n, redis_server.url, ("--query-port", str(free_port()), "--reuse-port")) as fs:
        yield fs


def counters(clippers: list[ClipperProcess], app: str) -> dict[str, float]:
    """The server's counters for ``app``, summed over the frontends (each read on its own
    management port: the query port may be shared)."""
    out = dict.fromkeys(("prediction", "default", "shed", "error", "refused", "batches",
                         "batched"), 0.0)
    for clipper in clippers:
        req = urllib.request.Request(f"{clipper.management_url}/metrics",
                                     headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            stats = json.loads(r.read())
        a = stats["apps"].get(app, {})
        for k in ("prediction", "default", "shed", "error", "refused"):
            out[k] += float(a.get(k, 0))  # refused: the edge's refusals (before parsing)
        for m in stats["models"].values():
            b = m.get("batch_size") or {}
            out["batches"] += float(b.get("count", 0))
            out["batched"] += float(b.get("sum", 0))
    return out


def after_latency(clipper: ClipperProcess, app: str, n: int) -> tuple[float, int]:
    """p50 (ms) of ``n`` single queries one at a time, and how many were predictions."""
    lat = []
    preds = 0
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = post_json(f"{clipper.query_url}/{app}/predict", {"input": [1.0, 2.0]})
        lat.append(time.perf_counter() - t0)
        preds += status == 200 and isinstance(body, dict) and body.get("default") is False
    return float(np.percentile(lat, 50)) * 1e3, preds


class Hog:
    """A busy loop on one core beside Clipper (``cpu_hog = true``)."""

    def __enter__(self) -> "Hog":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait()


def run_row(doc: dict, row: dict, saturation: dict) -> dict[str, Any]:
    if row.get("baseline") == "nginx":
        return run_baseline(doc, row, saturation)
    if "baseline" in row:
        raise SystemExit(f"row {row['name']!r}: baseline must be \"nginx\", got {row['baseline']!r}")
    slo_ms = float(doc.get("slo_ms", 20))
    slack_ms = float(doc.get("slack_ms", 5))
    duration = float(doc.get("duration_s", 10))
    warmup = float(doc.get("warmup_s", 2))
    conns = int(doc.get("connections", 256))
    fn, x = _models.build(dict(row["model"]))
    body = json.dumps({"input": x}).encode()
    app = "ovl"
    n_frontends = int(row.get("frontends", 1))
    if n_frontends > 1 and row.get("capacity_qps") == "saturation" and "qps" not in saturation:
        raise SystemExit(f"row {row['name']!r}: the saturation rate is one frontend's; measure "
                         "it in a one-frontend row before this one")
    with clippers(n_frontends) as fronts:
        clipper = fronts[0]
        conn = clipper.conn
        conn.register_application(app, "doubles", DEFAULT_OUTPUT, int(slo_ms * 1000),
                                  cache_enabled=False)
        conn.deploy_python_closure(app, 1, "doubles", fn, batch_size=int(row.get("batch_size", -1)))
        conn.link_model_to_app(app, app)
        for f in fronts:  # the replica serves every frontend
            wait_for(lambda f=f: any(r["connected"] for r in
                                     f.conn.get_all_model_replicas(verbose=True)),
                     60, "the replica to serve every frontend")
        status, answer = clipper.predict(app, {"input": x})
        if status != 200 or answer.get("default") is not False:
            raise RuntimeError(f"the model does not answer: HTTP {status} {answer!r}")
        # oha keeps each answer's size, not its body: a prediction is the sample's size give
        # or take the query id's digits; a default carries its explanation (tens of bytes more)
        pred_max = len(json.dumps(answer, separators=(",", ":"))) + 10
        url = f"{clipper.query_url}/{app}/predict"
        cap = row.get("capacity_qps")
        if cap == "saturation":
            if "qps" not in saturation:
                # through an app of the same model with a 1 s SLO: the frontend's overload
                # control (a quarter of the tightest wait budget served in the last second)
                # then leaves the closed loop alone, and this is what the frontend can serve
                conn.register_application(app + "-sat", "doubles", DEFAULT_OUTPUT, 1_000_000,
                                          cache_enabled=False)
                conn.link_model_to_app(app + "-sat", app)
                sat_url = f"{clipper.query_url}/{app}-sat/predict"
                oha(sat_url, body, duration_s=warmup, connections=int(doc.get(
                    "saturation_connections", 64)), rate=None)
                s = oha(sat_url, body, duration_s=duration, connections=int(doc.get(
                    "saturation_connections", 64)), rate=None)
                # predictions only: refusals are not what the frontend can serve
                preds = (s["sizes"] > 0) & (s["sizes"] <= pred_max)
                saturation["qps"] = float(np.sum(preds)) / duration
                log(f"saturation: {saturation['qps']:.0f} predictions/s (closed loop; "
                    f"{len(s['sizes']) / duration:.0f} answers/s)")
            cap = saturation["qps"]
        rate = float(cap) * float(row.get("rate_x", 1.0))
        oha(url, body, duration_s=warmup, connections=conns, rate=rate)
        c0 = counters(fronts, app)
        res, elapsed, server_cores, oha_cores = measured_oha(
            url, body, duration_s=duration, connections=conns, rate=rate,
            pids=[f.proc.pid for f in fronts])
        c1 = counters(fronts, app)
        after_ms, after_preds = after_latency(clipper, app, int(doc.get("after_queries", 50)))
    d = {k: c1[k] - c0[k] for k in ("prediction", "default", "shed", "error", "refused",
                                    "batches", "batched")}
    size = d["batched"] / d["batches"] if d["batches"] else None
    total = max(1.0, d["prediction"] + d["default"] + d["shed"] + d["error"] + d["refused"])
    is_pred = (res["sizes"] > 0) & (res["sizes"] <= pred_max)
    return {
        "case": row["name"], "rate": rate, "offered": rate, "elapsed_s": elapsed,
        **answer_stats(res, is_pred, duration, (slo_ms + slack_ms) / 1e3),
        "capacity": float(cap),
        "default_share": (d["default"] + d["shed"]) / total, "refused_share": d["refused"] / total,
        "server": d, "after_p50_ms": after_ms,
        "after_predictions": after_preds, "mean_batch_size": size,
        "server_cores": server_cores, "oha_cores": oha_cores,
    }


def answer_stats(res: dict, is_pred: np.ndarray, duration: float, bound: float) -> dict:
    """What a row reports of oha's records ``res``: answers, the share within ``bound`` s,
    percentiles (numpy's), goodput (the ``is_pred`` answers within ``bound``, per second)."""
    lat = res["latencies"]
    n = len(lat)
    return {
        "answered": n, "answered_per_s": n / duration,
        "within_share": float(np.mean(lat <= bound)) if n else None,
        "p50_ms": float(np.percentile(lat, 50)) * 1e3 if n else None,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3 if n else None,
        "p999_ms": float(np.percentile(lat, 99.9)) * 1e3 if n else None,
        "max_ms": float(lat.max()) * 1e3 if n else None,
        "goodput": int(np.sum(is_pred & (lat <= bound))) / duration if n else 0.0,
        "predictions_per_s": float(np.sum(is_pred)) / duration if n else 0.0,
        "statuses": res["statuses"], "oha_errors": res["summary"].get("errorDistribution", {}),
    }


#: what the baseline answers: the shape and size of a prediction of the no-op model
CONSTANT_ANSWER = '{"query_id":1234567,"output":0,"default":false,"confidence":1.0,"models":["ovl:1"]}'


@contextlib.contextmanager
def constant_server():
    """nginx answering every request at once with :data:`CONSTANT_ANSWER`: what the machine
    and the load generator allow at a row's rate with no Python server in the way.  Yields
    its URL and the master's pid."""
    nginx = need("nginx")
    with tempfile.TemporaryDirectory(prefix="overload-nginx-") as d:
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(d, port, f"default_type application/json; "
                                        f"return 200 '{CONSTANT_ANSWER}';",
                               workers=os.cpu_count() or 1))
        proc = subprocess.Popen([nginx, "-c", conf, "-p", d], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/ovl/predict"

            def answers() -> bool:
                try:
                    return post_json(url, {"input": [0.0]})[0] == 200
                except OSError:  # not listening yet
                    return False

            wait_for(answers, 10, "nginx to answer")
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


def run_baseline(doc: dict, row: dict, saturation: dict) -> dict[str, Any]:
    """A ``baseline = "nginx"`` row: the same open-loop load as a frontend-bound row (its
    ``rate_x`` times the saturation rate measured earlier in the run) on
    :func:`constant_server`, every answer a prediction."""
    if "qps" not in saturation:
        raise SystemExit(f"row {row['name']!r}: a baseline runs at a multiple of the "
                         "saturation rate; measure it in a one-frontend row before this one")
    slo_ms = float(doc.get("slo_ms", 20))
    slack_ms = float(doc.get("slack_ms", 5))
    duration = float(doc.get("duration_s", 10))
    conns = int(doc.get("connections", 256))
    rate = saturation["qps"] * float(row.get("rate_x", 1.0))
    body = json.dumps({"input": [0.0] * 10}).encode()
    with constant_server() as (url, pid):
        oha(url, body, duration_s=float(doc.get("warmup_s", 2)), connections=conns, rate=rate)
        res, elapsed, server_cores, oha_cores = measured_oha(
            url, body, duration_s=duration, connections=conns, rate=rate,
            pids=[pid, *children(pid)])
    return {
        "case": row["name"], "rate": rate, "offered": rate, "elapsed_s": elapsed,
        **answer_stats(res, res["sizes"] > 0, duration, (slo_ms + slack_ms) / 1e3),
        "capacity": saturation["qps"], "default_share": 0.0, "refused_share": 0.0,
        "server": {}, "after_p50_ms": None, "after_predictions": None,
        "mean_batch_size": None, "server_cores": server_cores, "oha_cores": oha_cores,
    }


def table(results: list[dict], slo_ms: float, slack_ms: float) -> str:
    head = ["case", "load q/s", f"within {slo_ms:g}+{slack_ms:g} ms", "p50 ms", "p99 ms",
            "goodput/s", "x capacity", "default %", "refused %", "after p50 ms", "batch size",
            "server CPU", "oha CPU"]
    rows = []
    for r in results:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        rows.append([r["case"], f"{r['rate']:.0f}", f(None if r["within_share"] is None
                                                       else 100 * r["within_share"], ".2f") + " %",
                     f(r["p50_ms"], ".1f"), f(r["p99_ms"], ".1f"), f"{r['goodput']:.0f}",
                     f"{r['goodput'] / r['capacity']:.2f}", f"{100 * r['default_share']:.1f}",
                     f"{100 * r['refused_share']:.1f}", f(r["after_p50_ms"], ".2f"),
                     f(r["mean_batch_size"], ".1f"), f(r.get("server_cores"), ".2f"),
                     f(r.get("oha_cores"), ".2f")])
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cs: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i])  # noqa: E731
                                for i, c in enumerate(cs))
    return "\n".join([line(head), *(line(r) for r in rows)])


def fixed_sweep(doc: dict, rows: list[dict], results: list[dict],
                saturation: dict) -> dict | None:
    """The ``[fixed_sweep]`` table: its row again with each fixed batch size of
    ``batch_sizes``; returns the adaptive row's goodput as a share of the best fixed size's
    (issue 14: within 10 % at 1x), or None when the scenario has no sweep or its row did not
    run."""
    sweep = doc.get("fixed_sweep")
    if not sweep:
        return None
    name = sweep["row"]
    adaptive = next((r for r in results if r["case"] == name), None)
    row = next((r for r in rows if r["name"] == name), None)
    if adaptive is None or row is None:
        return None
    fixed = []
    for bs in sweep["batch_sizes"]:
        log(f"row {name}, fixed batch size {bs}")
        r = run_row(doc, {**row, "name": f"{name}, batch size {bs}", "batch_size": int(bs)},
                    saturation)
        log(f"  goodput {r['goodput']:.0f}/s")
        fixed.append({"batch_size": int(bs), "goodput": r["goodput"],
                      "within_share": r["within_share"], "p99_ms": r["p99_ms"]})
    best = max(fixed, key=lambda f: f["goodput"])
    ratio = adaptive["goodput"] / best["goodput"] if best["goodput"] else None
    cells = ", ".join(f"{f['batch_size']}: {f['goodput']:.0f}/s" for f in fixed)
    text = (f"fixed batch sizes on {name!r}: {cells}; adaptive {adaptive['goodput']:.0f}/s = "
            f"{ratio:.2f} of the best fixed size ({best['batch_size']})")
    return {"row": name, "fixed": fixed, "best": best, "adaptive_goodput": adaptive["goodput"],
            "adaptive_to_best": ratio, "text": text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="?", default=SCENARIO)
    ap.add_argument("--quick", action="store_true", help="the scenario's [quick] settings")
    ap.add_argument("--row", action="append", metavar="NAME",
                    help="only this row (repeat for several; names hold commas)")
    ap.add_argument("--cpu-hog", action="store_true", help="a busy loop on one core beside Clipper")
    ap.add_argument("--out", help="results file (default benchmarks/results/scenarios/overload.json)")
    ns = ap.parse_args(argv)
    with open(ns.scenario, "rb") as f:
        doc = tomllib.load(f)
    quick = doc.pop("quick", {})
    if ns.quick:
        doc.update(quick)
    hog = ns.cpu_hog or bool(doc.get("cpu_hog", False))
    rows = doc["rows"]
    if ns.row:
        unknown = set(ns.row) - {r["name"] for r in rows}
        if unknown:
            raise SystemExit(f"no row named {sorted(unknown)} in {ns.scenario}")
        rows = [r for r in rows if r["name"] in ns.row]
    find_oha()
    load_before = os.getloadavg()
    saturation: dict = {}
    results = []
    for row in rows:
        log(f"row {row['name']}")
        if hog or row.get("cpu_hog", False):
            with Hog():
                results.append(run_row(doc, row, saturation))
        else:
            results.append(run_row(doc, row, saturation))
        r = results[-1]
        log(f"  {r['rate']:.0f} q/s: within {100 * (r['within_share'] or 0):.2f} %, p99 "
            f"{r['p99_ms'] or 0:.1f} ms, goodput {r['goodput']:.0f}/s")
    fixed = fixed_sweep(doc, rows, results, saturation)
    load_after = os.getloadavg()
    slo, slack = float(doc.get("slo_ms", 20)), float(doc.get("slack_ms", 5))
    text = table(results, slo, slack)
    machine = (f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
               f"{load_after[0]:.2f} after{'; CPU hog on one core' if hog else ''}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                            capture_output=True, text=True).stdout.strip()
    print(f"== overload ({doc.get('description', '')}) commit {commit} ==")
    print(text)
    print("goodput = predictions answered within SLO + slack per second (a prediction told "
          "from a default by the answer's size); x capacity = goodput / the row's capacity; default % "
          "includes sheds; refused % = refused at the edge before parsing; server CPU / oha CPU = "
          "cores the frontends (nginx: its processes) and the load generator used over the run")
    if fixed is not None:
        print(fixed["text"])
    print(f"machine: {machine}")
    out = ns.out or os.path.join(RESULTS, f"overload{'.quick' if ns.quick else ''}"
                                 f"{'.hog' if hog else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"commit": commit, "settings": doc, "machine": machine, "table": text,
                   "rows": results, "saturation_qps": saturation.get("qps"),
                   "fixed_sweep": fixed,
                   "loadavg_before": load_before, "loadavg_after": load_after}, f, indent=1,
                  default=float)
    print(f"results: {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
