#!/usr/bin/env python
"""Reproduce Clipper's headline results on one machine: run benchmark scenario files.

    .venv/bin/python benchmarks/run.py benchmarks/scenarios/overhead.toml
    .venv/bin/python benchmarks/run.py --all            # every scenario, one after another
    .venv/bin/python benchmarks/run.py --all --quick    # a smoke run of each (seconds)

Each scenario starts a real Clipper (its own state directory, free ports), deploys the
models it names as Python closures, drives them with clipper-bench's load generator
(``clipper_core.bench``), prints a summary table and writes everything it measured to
``benchmarks/results/scenarios/<scenario>.json`` (``<scenario>.quick.json`` with
``--quick``).

A scenario file is TOML; its ``kind`` picks what is measured:

``overhead``
    Closed loop, one user: Clipper's latency per model against baselines measured in the
    same run, interleaved: a bare aiohttp server (the HTTP round trip), the model behind a
    bare ZeroMQ DEALER -> ROUTER echo (the hop to a model process), and the model called
    in-process (its compute). Clipper's own work is ``Clipper - HTTP - ZeroMQ``.
``slo_throughput``
    A sweep of load levels per model; the highest achieved throughput whose p99 stays within
    the SLO, with at most ``max_miss_share`` of the requests failed or answered with the
    app's default output.
``compare``
    Variants of one model deployment (``batch_size``, ``cache_enabled``) under the same
    load, interleaved; throughput and latency per variant and the ratio to the first.

Every request of a level sends the same input, so apps are registered with the prediction
cache off (a cache would answer all but the first), unless the scenario (or a variant) sets
``cache_enabled = true``.

Every scenario repeats its measurements ``repetitions`` times, rotating the order of the
variants each time, and reports median (min-max) over the repetitions: this is meant for a
shared, noisy machine where single loopback runs swing 1.5-2x.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _baselines  # noqa: E402
import _models  # noqa: E402
import _sweep  # noqa: E402
from _models import ScenarioError  # noqa: E402

from clipper_core.admin import pickle_closure  # noqa: E402
from clipper_core.bench import BenchConfig, LevelResult, Target, build_target  # noqa: E402
from clipper_core.bench.runner import Pool, make_pool, run_level  # noqa: E402
from clipper_core.bench.stats import summarize  # noqa: E402
from clipper_core.testing import ClipperProcess  # noqa: E402

SCENARIO_DIR = os.path.join(HERE, "scenarios")
RESULTS_DIR = os.path.join(HERE, "results", "scenarios")
INPUT_TYPE = "doubles"
DEFAULT_OUTPUT = -1.0


def shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"{time.monotonic() - _T0:6.1f}s {msg}", file=sys.stderr, flush=True)


# -- scenario files ------------------------------------------------------------------------


class Settings:
    """A scenario's top-level table, with ``[quick]`` merged over it under ``--quick``."""

    def __init__(self, path: str, quick: bool, overrides: dict[str, Any]) -> None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ScenarioError(f"cannot read scenario {path}: {e}") from None
        quick_table = doc.pop("quick", {})
        if quick:
            doc.update(quick_table)
        doc.update({k: v for k, v in overrides.items() if v is not None})
        self.path = path
        self.quick = quick
        self.doc = doc
        self.name = str(doc.get("name") or os.path.splitext(os.path.basename(path))[0])
        self.kind = self.text("kind", None)

    def text(self, key: str, default: str | None) -> str:
        v = self.doc.get(key, default)
        if not isinstance(v, str):
            raise ScenarioError(f"{self.path}: {key} must be a string, got {v!r}")
        return v

    def number(self, key: str, default: float | None, minimum: float = 0.0) -> float:
        v = self.doc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < minimum:
            raise ScenarioError(f"{self.path}: {key} must be a number >= {minimum:g}, got {v!r}")
        return float(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.doc.get(key, default)
        if not isinstance(v, bool):
            raise ScenarioError(f"{self.path}: {key} must be true or false, got {v!r}")
        return v

    def integer(self, key: str, default: int | None, minimum: int = 1) -> int:
        v = self.doc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ScenarioError(f"{self.path}: {key} must be a whole number >= {minimum}, got {v!r}")
        return v

    def tables(self, key: str) -> list[dict[str, Any]]:
        v = self.doc.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(t, dict) for t in v):
            raise ScenarioError(f"{self.path}: needs at least one [[{key}]] table")
        return v

    def load(self) -> tuple[str, tuple[float, ...]]:
        """``("closed", concurrencies)`` or ``("open", rates)`` from ``concurrency`` / ``rate``."""
        has_c, has_r = "concurrency" in self.doc, "rate" in self.doc
        if has_c == has_r:
            raise ScenarioError(f"{self.path}: give either concurrency or rate (a number or a list)")
        key = "concurrency" if has_c else "rate"
        raw = self.doc[key]
        values = raw if isinstance(raw, list) else [raw]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
            raise ScenarioError(f"{self.path}: {key} must be a positive number or a list of them, got {raw!r}")
        if has_c and any(v != int(v) for v in values):
            raise ScenarioError(f"{self.path}: concurrency must be whole numbers, got {raw!r}")
        return ("closed" if has_c else "open"), tuple(float(v) for v in values)


# -- measuring -----------------------------------------------------------------------------


class Driver:
    """clipper-bench's generator, one worker pool per target kept for the whole scenario."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.workers = s.integer("workers", 1, minimum=0)
        self.duration = s.number("duration_s", 3.0, minimum=0.05)
        self.warmup = s.number("warmup_s", 1.0)
        self.window = min(self.duration, s.number("window_s", 1.0, minimum=0.05))
        self.seed = s.integer("seed", 1, minimum=0)
        self._pools: dict[str, Pool] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runs = 0

    async def level(self, target: Target, mode: str, value: float, slo_ms: float | None = None) -> LevelResult:
        cfg = BenchConfig(target=target, mode=mode, levels=(value,), seed=self.seed + self._runs,
                          warmup=self.warmup, duration=self.duration, window=self.window,
                          slo_ms=slo_ms, workers=self.workers)
        self._runs += 1
        pool = self._pools.get(target.url)
        if pool is None:
            pool = self._pools[target.url] = make_pool(cfg)
            await pool.start()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return await run_level(pool, cfg, 0, stats_session=self._session if target.stats_url else None)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        if self._session is not None:
            await self._session.close()


def clipper_target(clipper: ClipperProcess, app: str, x: list[float]) -> Target:
    return build_target(f"{clipper.query_url}/{app}/predict", input_json=json.dumps(x))


def deploy(clipper: ClipperProcess, app: str, fn: Callable, x: list[float], *, slo_ms: float,
           batch_size: int, cache_enabled: bool) -> None:
    """Register ``app``, deploy ``fn`` as the model of the same name, link, check one answer."""
    conn = clipper.conn
    conn.register_application(app, INPUT_TYPE, DEFAULT_OUTPUT, int(slo_ms * 1000), cache_enabled=cache_enabled)
    conn.deploy_python_closure(app, 1, INPUT_TYPE, fn, batch_size=batch_size)
    conn.link_model_to_app(app, app)
    status, body = clipper.predict(app, {"input": x})
    if status != 200 or not isinstance(body, dict) or body.get("default") is not False:
        raise RuntimeError(f"app {app!r} does not answer with its model: HTTP {status}, {body!r}")


def app_name(prefix: str, name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{prefix}-{slug}"[:60].rstrip("-")


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    k %= max(1, len(items))
    return list(items[k:]) + list(items[:k])


def model_specs(s: Settings, only: Sequence[str] | None) -> list[dict[str, Any]]:
    specs = s.tables("models")
    for spec in specs:
        spec.setdefault("name", spec.get("kind", "?"))
    if only:
        unknown = set(only) - {m["name"] for m in specs}
        if unknown:
            raise ScenarioError(f"{s.path}: no model named {', '.join(sorted(unknown))} "
                                f"(it has {', '.join(m['name'] for m in specs)})")
        specs = [m for m in specs if m["name"] in only]
    return specs


def batch_size_of(spec: dict[str, Any], path: str) -> int:
    b = spec.get("batch_size", -1)
    if isinstance(b, bool) or not isinstance(b, int) or not (b == -1 or b >= 1):
        raise ScenarioError(f"{path}: batch_size must be -1 (adaptive) or >= 1, got {b!r}")
    return b


def server_value(lvl: LevelResult, key: str) -> float | None:
    return (lvl.server or {}).get("total", {}).get(key)


# -- reporting -----------------------------------------------------------------------------


def spread(values: Sequence[float | None], fmt: str = ".0f") -> str:
    """``median (min-max)`` of the values that exist; ``-`` when none does."""
    vs = [v for v in values if v is not None and not np.isnan(v)]
    if not vs:
        return "-"
    med = format(float(np.median(vs)), fmt)
    if len(vs) == 1:
        return med
    return f"{med} ({format(min(vs), fmt)}-{format(max(vs), fmt)})"


def median(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return float(np.median(vs)) if vs else None


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), *(line(r) for r in rows)])


def good(lvl: LevelResult) -> float:
    """Predictions per second: successful answers less the default answers."""
    return lvl.achieved_rps * (1.0 - (lvl.default_share or 0.0))


def us(v: float | None) -> float | None:
    return None if v is None else v * 1e6


def ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


# -- kind: overhead ------------------------------------------------------------------------


async def run_overhead(s: Settings, clipper: ClipperProcess, only: Sequence[str] | None) -> tuple[str, dict]:
    reps = s.integer("repetitions", 3)
    slo_ms = s.number("slo_ms", 1000.0, minimum=1.0)
    specs = model_specs(s, only)
    built = [(spec, *_models.build(spec)) for spec in specs]
    drv = Driver(s)
    runs: list[dict[str, Any]] = []
    by_model: dict[str, list[dict[str, float | None]]] = {spec["name"]: [] for spec in specs}
    zmq_floors: dict[str, _baselines.ZmqFloor] = {}
    try:
        for spec, fn, x in built:
            app = app_name("ovh", spec["name"])
            deploy(clipper, app, fn, x, slo_ms=slo_ms, batch_size=batch_size_of(spec, s.path),
                   cache_enabled=s.flag("cache_enabled", False))
            zmq_floors[spec["name"]] = _baselines.ZmqFloor(pickle_closure(fn)).__enter__()
        with _baselines.HttpFloor() as http:
            http_target = build_target(http.url, stats_url="none")
            for rep in range(reps):
                for spec, fn, x in rotated(built, rep):
                    name = spec["name"]
                    arr = np.asarray(x, dtype=np.float64)
                    out: dict[str, Any] = {}
                    for variant in rotated(["clipper", "http", "zmq", "in_process"], rep):
                        if variant == "clipper":
                            out[variant] = await drv.level(clipper_target(clipper, app_name("ovh", name), x),
                                                           "closed", 1)
                        elif variant == "http":
                            out[variant] = await drv.level(http_target, "closed", 1)
                        elif variant == "zmq":
                            out[variant] = summarize(zmq_floors[name].measure(arr, drv.duration, drv.warmup))
                        else:
                            out[variant] = summarize(_baselines.in_process(fn, arr, min(drv.duration, 0.5)))
                    c, h = out["clipper"], out["http"]
                    row = {
                        "clipper_p50": us(c.latency.p50), "clipper_p99": us(c.latency.p99),
                        "clipper_rps": c.achieved_rps, "clipper_errors": c.error_count,
                        "clipper_defaults": c.default_share,
                        "http_p50": us(h.latency.p50), "zmq_p50": us(out["zmq"].p50),
                        "model_p50": us(out["in_process"].p50),
                        "server_compute": server_value(c, "compute_us"),
                    }
                    if None not in (row["clipper_p50"], row["model_p50"]):
                        row["over_model"] = row["clipper_p50"] - row["model_p50"]  # type: ignore[operator]
                    if None not in (row["clipper_p50"], row["http_p50"], row["zmq_p50"]):
                        row["own"] = row["clipper_p50"] - row["http_p50"] - row["zmq_p50"]  # type: ignore[operator]
                    by_model[name].append(row)
                    log(f"[{s.name}] rep {rep + 1}/{reps} {name}: Clipper p50 {row['clipper_p50'] or 0:.0f} us, "
                        f"HTTP floor {row['http_p50'] or 0:.0f} us, ZeroMQ+model {row['zmq_p50'] or 0:.0f} us, "
                        f"model {row['model_p50'] or 0:.1f} us")
                    runs.append({"rep": rep, "model": name, "derived_us": row,
                                 "clipper": c.to_dict(), "http_floor": h.to_dict(),
                                 "zmq_floor_ms": out["zmq"].as_ms(), "in_process_ms": out["in_process"].as_ms()})
    finally:
        await drv.close()
        for z in zmq_floors.values():
            z.__exit__(None, None, None)

    names = [spec["name"] for spec in specs]
    lines = [
        ("Clipper p50 (client latency)", "clipper_p50", ".0f"),
        ("Clipper p99", "clipper_p99", ".0f"),
        ("Clipper queries/s (1 user)", "clipper_rps", ".0f"),
        ("HTTP floor p50 (bare aiohttp)", "http_p50", ".0f"),
        ("ZeroMQ hop + model p50", "zmq_p50", ".0f"),
        ("model compute p50 (in-process)", "model_p50", ".1f"),
        ("Clipper - model compute", "over_model", ".0f"),
        ("Clipper - HTTP - ZeroMQ (own work)", "own", ".0f"),
        ("server-side compute (/stats)", "server_compute", ".0f"),
    ]
    rows = [[label, *(spread([r.get(key) for r in by_model[n]], fmt) for n in names)] for label, key, fmt in lines]
    errors = sum(r["clipper_errors"] or 0 for n in names for r in by_model[n])
    text = [
        f"overhead at low load: closed loop, 1 user, {reps} x {drv.duration:g} s per measurement, "
        f"interleaved; microseconds, median (min-max) over repetitions",
        render(["", *names], rows),
        "'own work' is what Clipper adds beyond one HTTP round trip and one ZeroMQ hop to the model "
        "(design target: <= 300 us median added by the frontend).",
    ]
    if all(r["server_compute"] is None for n in names for r in by_model[n]):
        text.append("server-side compute: '-' = this Clipper has no GET /stats; the in-process row is the model's compute.")
    if errors:
        text.append(f"WARNING: {errors} Clipper requests failed (see the results file)")
    summary = {n: {key: {"median": median([r.get(key) for r in by_model[n]]),
                         "min": min((r[key] for r in by_model[n] if r.get(key) is not None), default=None),
                         "max": max((r[key] for r in by_model[n] if r.get(key) is not None), default=None)}
                   for _, key, _ in lines} for n in names}
    detail: dict[str, Any] = {"unit": "us", "summary": summary, "runs": runs}
    if "sweep" in s.doc:  # the closed-loop sweep against the bare server (benchmarks/_sweep.py)
        sweep = dict(s.doc["sweep"])
        quick_sweep = sweep.pop("quick", {})
        if s.quick:
            sweep.update(quick_sweep)
        sweep_text, detail["sweep"] = _sweep.run_sweep(sweep, clipper, slo_ms, log)
        text += ["", sweep_text]
    return "\n".join(text), detail


# -- kind: slo_throughput ------------------------------------------------------------------


def miss_share(lvl: LevelResult) -> float:
    """Share of the measured requests that failed or got the app's default output."""
    if not lvl.sent:
        return 1.0
    return (lvl.error_count + lvl.ok * (lvl.default_share or 0.0)) / lvl.sent


def meets_slo(lvl: LevelResult, slo_ms: float, max_miss: float) -> bool:
    p99 = lvl.latency.p99
    return lvl.ok > 0 and p99 is not None and p99 * 1e3 <= slo_ms and miss_share(lvl) <= max_miss


async def run_slo_throughput(s: Settings, clipper: ClipperProcess, only: Sequence[str] | None) -> tuple[str, dict]:
    reps = s.integer("repetitions", 3)
    slo_ms = s.number("slo_ms", 20.0, minimum=0.1)
    app_slo_ms = s.number("app_slo_ms", slo_ms, minimum=1.0)
    max_miss = s.number("max_miss_share", 0.01)
    misses_to_stop = s.integer("stop_after_misses", 2)
    mode, levels = s.load()
    specs = model_specs(s, only)
    built = [(spec, *_models.build(spec)) for spec in specs]
    drv = Driver(s)
    runs: list[dict[str, Any]] = []
    best: dict[str, list[dict[str, Any]]] = {spec["name"]: [] for spec in specs}
    per_level: dict[str, dict[float, list[LevelResult]]] = {spec["name"]: {} for spec in specs}
    try:
        for spec, fn, x in built:
            deploy(clipper, app_name("slo", spec["name"]), fn, x, slo_ms=app_slo_ms,
                   batch_size=batch_size_of(spec, s.path), cache_enabled=s.flag("cache_enabled", False))
        for rep in range(reps):
            for spec, fn, x in rotated(built, rep):
                name = spec["name"]
                target = clipper_target(clipper, app_name("slo", name), x)
                top: LevelResult | None = None
                misses = 0
                for value in levels:
                    lvl = await drv.level(target, mode, value, slo_ms=slo_ms)
                    per_level[name].setdefault(value, []).append(lvl)
                    ok = meets_slo(lvl, slo_ms, max_miss)
                    runs.append({"rep": rep, "model": name, "meets_slo": ok, "level": lvl.to_dict()})
                    log(f"[{s.name}] rep {rep + 1}/{reps} {name} {lvl.label}: {lvl.achieved_rps:.0f} req/s, "
                        f"p99 {ms(lvl.latency.p99) or 0:.2f} ms, defaults {100 * (lvl.default_share or 0):.1f}%"
                        f"{'' if ok else '  (misses the SLO)'}")
                    if ok:
                        misses = 0
                        if top is None or lvl.achieved_rps > top.achieved_rps:
                            top = lvl
                    else:
                        misses += 1
                        if misses >= misses_to_stop:
                            break
                best[name].append({"rep": rep, "rps": top.achieved_rps if top else None,
                                   "level": top.label if top else None,
                                   "p99_ms": ms(top.latency.p99) if top else None,
                                   "batch_size": server_value(top, "batch_size") if top else None,
                                   "generator_saturated": top.generator_saturated if top else None})
    finally:
        await drv.close()

    unit = "users" if mode == "closed" else "req/s offered"
    rows = []
    for spec in specs:
        name = spec["name"]
        bs = best[name]
        labels = [b["level"] for b in bs if b["level"]]
        rows.append([name, spread([b["rps"] for b in bs]), ", ".join(labels) or "none",
                     spread([b["p99_ms"] for b in bs], ".2f"), spread([b["batch_size"] for b in bs], ".1f"),
                     "yes" if any(b["generator_saturated"] for b in bs) else "no"])
    text = [
        f"highest throughput with p99 <= {slo_ms:g} ms and <= {100 * max_miss:g}% of requests failed or "
        f"answered with the default: "
        f"{'closed' if mode == 'closed' else 'open'} loop over {unit} {', '.join(f'{v:g}' for v in levels)}, "
        f"{reps} x {drv.duration:g} s per level; median (min-max) over repetitions",
        render(["model", "queries/s", "at level (per rep)", "p99 ms there", "batch size", "generator saturated"],
               rows),
        "",
        "per level (median over repetitions):",
    ]
    lrows = []
    for spec in specs:
        name = spec["name"]
        for value, lvls in per_level[name].items():
            lrows.append([name, lvls[0].label, spread([lv.achieved_rps for lv in lvls]),
                          spread([ms(lv.latency.p50) for lv in lvls], ".2f"),
                          spread([ms(lv.latency.p99) for lv in lvls], ".2f"),
                          f"{median([100 * (lv.default_share or 0) for lv in lvls]):.1f}",
                          str(sum(lv.error_count for lv in lvls)),
                          f"{sum(meets_slo(lv, slo_ms, max_miss) for lv in lvls)}/{len(lvls)}"])
    text.append(render(["model", "level", "queries/s", "p50 ms", "p99 ms", "default %", "errors (all reps)",
                        "meets SLO"], lrows))
    if any(b["generator_saturated"] for bs in best.values() for b in bs):
        text.append("the load generator was near a full core at a best level: those numbers are lower bounds "
                    "(raise workers in the scenario).")
    summary = {spec["name"]: {"best_rps_median": median([b["rps"] for b in best[spec["name"]]]),
                              "per_rep": best[spec["name"]]} for spec in specs}
    return "\n".join(text), {"slo_ms": slo_ms, "summary": summary, "runs": runs}


# -- kind: compare -------------------------------------------------------------------------


async def run_compare(s: Settings, clipper: ClipperProcess, only: Sequence[str] | None) -> tuple[str, dict]:
    reps = s.integer("repetitions", 3)
    slo_ms = s.number("slo_ms", 100.0, minimum=1.0)
    mode, levels = s.load()
    if len(levels) != 1:
        raise ScenarioError(f"{s.path}: a compare scenario runs one load level, got {len(levels)}")
    value = levels[0]
    model = s.doc.get("model")
    if not isinstance(model, dict):
        raise ScenarioError(f"{s.path}: needs a [model] table")
    variants = s.tables("variants")
    for v in variants:
        if "name" not in v:
            raise ScenarioError(f"{s.path}: every [[variants]] table needs a name")
        extra = set(v) - {"name", "batch_size", "cache_enabled"}
        if extra:
            raise ScenarioError(f"{s.path}: variant {v['name']!r} has unknown keys {', '.join(sorted(extra))}")
        if not isinstance(v.get("cache_enabled", False), bool):
            raise ScenarioError(f"{s.path}: variant {v['name']!r}: cache_enabled must be true or false")
    cache_default = s.flag("cache_enabled", False)
    fn, x = _models.build(model)
    drv = Driver(s)
    runs: list[dict[str, Any]] = []
    results: dict[str, list[LevelResult]] = {v["name"]: [] for v in variants}
    try:
        targets = {}
        for i, v in enumerate(variants):
            app = app_name(f"cmp{i}", v["name"])
            deploy(clipper, app, fn, x, slo_ms=slo_ms,
                   batch_size=batch_size_of({"batch_size": v.get("batch_size", model.get("batch_size", -1))}, s.path),
                   cache_enabled=v.get("cache_enabled", cache_default))
            targets[v["name"]] = clipper_target(clipper, app, x)
        for rep in range(reps):
            for v in rotated(variants, rep):
                lvl = await drv.level(targets[v["name"]], mode, value, slo_ms=slo_ms)
                results[v["name"]].append(lvl)
                runs.append({"rep": rep, "variant": v["name"], "level": lvl.to_dict()})
                log(f"[{s.name}] rep {rep + 1}/{reps} {v['name']}: {lvl.achieved_rps:.0f} req/s, "
                    f"p50 {ms(lvl.latency.p50) or 0:.2f} ms, p99 {ms(lvl.latency.p99) or 0:.2f} ms, "
                    f"cache hits {100 * (lvl.cache_hit_share or 0):.0f}%")
    finally:
        await drv.close()

    base = variants[0]["name"]
    rows = []
    ratios: dict[str, dict[str, Any]] = {}
    for v in variants:
        lv = results[v["name"]]
        paired = [good(a) / good(b) for a, b in zip(lv, results[base]) if good(b) > 0]
        ratios[v["name"]] = {"paired_median": median(paired), "paired_min": min(paired, default=None),
                             "paired_max": max(paired, default=None), "per_rep": paired}
        rows.append([v["name"], spread([good(lvl) for lvl in lv]), spread([lvl.achieved_rps for lvl in lv]),
                     spread([ms(lvl.latency.p50) for lvl in lv], ".2f"),
                     spread([ms(lvl.latency.p99) for lvl in lv], ".2f"),
                     str(sum(lvl.error_count for lvl in lv)),
                     spread([None if lvl.default_share is None else 100 * lvl.default_share for lvl in lv], ".1f"),
                     spread([None if lvl.cache_hit_share is None else 100 * lvl.cache_hit_share for lvl in lv],
                            ".1f"),
                     spread([server_value(lvl, "batch_size") for lvl in lv], ".1f"),
                     spread([100 * lvl.generator_cpu for lvl in lv], ".0f"),
                     "1" if v["name"] == base else spread(paired, ".2f")])
    load = f"{int(value)} users, closed loop" if mode == "closed" else f"{value:g} req/s, open loop"
    desc = s.doc.get("description", "")
    text = [
        f"{s.name}: {desc + '; ' if desc else ''}{load}, {reps} x {drv.duration:g} s per variant, "
        f"interleaved; median (min-max) over repetitions",
        render(["variant", "predictions/s", "answers/s", "p50 ms", "p99 ms", "errors", "default %", "cache hit %",
                "batch size", "gen CPU %", f"x {base}"], rows),
        f"'predictions/s': answers less the default answers; 'x {base}': its ratio per repetition (paired), "
        "median (min-max).",
    ]
    if any(v.get("cache_enabled", cache_default) for v in variants) and not any(
            lvl.cache_hit_share for lv in results.values() for lvl in lv):
        text.append("NOTE: no answer carried \"cache_hit\": true - this Clipper has no prediction cache yet "
                    "(or it is off), so the cache variants cannot differ.")
    if all(server_value(lvl, "batch_size") is None for lv in results.values() for lvl in lv):
        text.append("batch size: '-' = this Clipper has no GET /stats.")
    summary = {v["name"]: {"predictions_per_s_median": median([good(lvl) for lvl in results[v["name"]]]),
                           "answers_per_s_median": median([lvl.achieved_rps for lvl in results[v["name"]]]),
                           "p99_ms_median": median([ms(lvl.latency.p99) for lvl in results[v["name"]]]),
                           "ratio_to_" + base: ratios[v["name"]]} for v in variants}
    return "\n".join(text), {"summary": summary, "runs": runs}


# -- main ----------------------------------------------------------------------------------

KINDS = {"overhead": run_overhead, "slo_throughput": run_slo_throughput, "compare": run_compare}
_COMMON_KEYS = {"kind", "name", "description", "repetitions", "duration_s", "warmup_s", "window_s", "seed",
                "workers", "slo_ms", "cache_enabled"}
KEYS = {
    "overhead": _COMMON_KEYS | {"models", "sweep"},
    "slo_throughput": _COMMON_KEYS | {"models", "concurrency", "rate", "app_slo_ms", "max_miss_share",
                                      "stop_after_misses"},
    "compare": _COMMON_KEYS | {"model", "variants", "concurrency", "rate"},
}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_scenario(path: str, *, quick: bool, only: Sequence[str] | None, overrides: dict[str, Any],
                 results_dir: str) -> str:
    """Run one scenario file; returns the path of its results file."""
    s = Settings(path, quick, overrides)
    if s.kind not in KINDS:
        raise ScenarioError(f"{path}: kind must be one of {', '.join(KINDS)}, got {s.kind!r}")
    unknown = set(s.doc) - KEYS[s.kind]
    if unknown:
        raise ScenarioError(f"{path}: a {s.kind} scenario does not take {', '.join(sorted(unknown))} "
                            f"(it takes {', '.join(sorted(KEYS[s.kind]))})")
    # Models are built (and scikit-learn is looked for) before any process starts.
    if s.kind == "compare":
        _models.build(s.doc.get("model") or {})
    else:
        for spec in model_specs(s, only):
            _models.build(spec)
    log(f"[{s.name}] starting Clipper{' (quick)' if quick else ''}")
    started = time.time()
    load_before = os.getloadavg()
    with ClipperProcess() as clipper:
        table, detail = asyncio.run(KINDS[s.kind](s, clipper, only))
    load_after = os.getloadavg()
    machine = (f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before and {load_after[0]:.2f} after "
               f"(a shared machine: loopback numbers swing 1.5-2x between runs)")
    report = {
        "scenario": s.name, "kind": s.kind, "file": shown(path), "quick": quick,
        "started_at": started, "finished_at": time.time(), "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                    "platform": platform.platform(), "python": sys.version.split()[0]},
        "settings": s.doc, "table": table, **detail,
    }
    os.makedirs(results_dir, exist_ok=True)
    out = os.path.join(results_dir, f"{s.name}{'.quick' if quick else ''}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=float)
        f.write("\n")
    print(f"== {s.name} ({shown(path)}) ==")
    print(table)
    print(f"machine: {machine}")
    print(f"results: {shown(out)}")
    print(flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="scenarios: " + ", ".join(
                                     os.path.relpath(p) for p in sorted(glob.glob(os.path.join(SCENARIO_DIR, "*.toml")))))
    ap.add_argument("scenarios", nargs="*", help="scenario files (TOML)")
    ap.add_argument("--all", action="store_true", help="run every file in benchmarks/scenarios/")
    ap.add_argument("--quick", action="store_true", help="the scenario's [quick] settings: a smoke run")
    ap.add_argument("--models", help="only these models (comma-separated names) of a scenario's [[models]]")
    ap.add_argument("--repetitions", type=int, help="override the scenario's repetitions")
    ap.add_argument("--duration", type=float, help="override the scenario's duration_s (seconds per measurement)")
    ap.add_argument("--results-dir", default=RESULTS_DIR, help="where results files go (default benchmarks/results/scenarios)")
    ns = ap.parse_args(argv)
    paths = list(ns.scenarios)
    if ns.all:
        paths += sorted(glob.glob(os.path.join(SCENARIO_DIR, "*.toml")))
    if not paths:
        ap.error("give scenario files or --all")
    only = [m.strip() for m in ns.models.split(",") if m.strip()] if ns.models else None
    overrides = {"repetitions": ns.repetitions, "duration_s": ns.duration}
    failed = 0
    for path in paths:
        try:
            run_scenario(path, quick=ns.quick, only=only, overrides=overrides, results_dir=ns.results_dir)
        except ScenarioError as e:
            print(f"benchmarks/run.py: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
