"""The dashboard's live figures: one frame a second, derived from what the server already keeps.

Nothing here runs per query.  While at least one page watches, :class:`Feed` reads one
:func:`sample` a second (the metrics layer's counters and histograms, the scheduler's queues,
the registry, the replicas, the selection policies) and turns the difference between two
samples into a frame (:func:`derive`): rates, latency percentiles and the share answered within
the SLO over the last interval.  The frame is serialised once and handed to every watching page;
with no page open the feed does nothing at all.

:func:`derive` and the histogram arithmetic are sans-IO and tested on their own; only
:func:`sample` knows the server's objects.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Sequence

import orjson

from .. import log
from ..tasks import cancel_and_wait

if TYPE_CHECKING:
    from ..server import ClipperServer

#: frames a second page gets at once when it connects (5 minutes)
HISTORY = 300
#: errors and refusals kept for the page
EVENTS = 40


# ---------------------------------------------------------------------------- histograms

def delta(new: Sequence[int], old: Sequence[int] | None) -> list[int]:
    """Bucket counts observed between two cumulative readings of one histogram."""
    if old is None or len(old) != len(new):
        return list(new)
    d = [a - b for a, b in zip(new, old)]
    return list(new) if any(x < 0 for x in d) else d  # a reset (app re-created): start over


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile of observations given as bucket counts (``counts[i]`` observations
    in ``(bounds[i-1], bounds[i]]``, the last count above ``bounds[-1]``), interpolated
    linearly inside its bucket as Prometheus' ``histogram_quantile`` does; None without
    observations.  Above the last bound the answer is that bound (a lower limit)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    acc = 0
    for i, c in enumerate(counts):
        if c and acc + c >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lo = bounds[i - 1] if i > 0 else 0.0
            return lo + (bounds[i] - lo) * max(0.0, rank - acc) / c
        acc += c
    return float(bounds[-1])


def share_within(bounds: Sequence[float], counts: Sequence[int], limit: float) -> float | None:
    """The share of observations at or under ``limit`` (interpolated inside the bucket that
    holds it); None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    i = bisect_left(bounds, limit)
    below = sum(counts[:i])
    if i < len(bounds):
        lo = bounds[i - 1] if i > 0 else 0.0
        below += counts[i] * (limit - lo) / (bounds[i] - lo)
    return min(1.0, below / total)


# ---------------------------------------------------------------------------- errors and refusals

class EventLog(logging.Handler):
    """The last errors and refusals, for the page: every record at WARNING or above from a
    ``clipper.*`` logger, and the refusals the access logger reports (4xx answers, shed
    queries).  A record repeating the previous one's message only counts up."""

    def __init__(self, size: int = EVENTS) -> None:
        super().__init__(logging.INFO)
        self.events: collections.deque = collections.deque(maxlen=size)
        self.seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and record.name != log.access.name:
            return
        try:
            msg = record.getMessage()[:600]
        except Exception:  # a bad %-format in someone's log call
            msg = str(record.msg)[:600]
        self.seq += 1
        last = self.events[-1] if self.events else None
        if last is not None and last["message"] == msg and last["level"] == record.levelname:
            last["count"] += 1
            last["time"] = record.created
            last["seq"] = self.seq
            return
        self.events.append({"seq": self.seq, "time": record.created,
                            "level": record.levelname, "logger": record.name,
                            "message": msg, "count": 1})

    def attach(self) -> None:
        logging.getLogger("clipper").addHandler(self)

    def detach(self) -> None:
        logging.getLogger("clipper").removeHandler(self)


# ---------------------------------------------------------------------------- reading the server

def sample(server: "ClipperServer", events: EventLog | None = None) -> dict:
    """Everything a frame is derived from, read from the server's own figures."""
    from ..management import batching_json
    from ..metrics import SECONDS_BUCKETS

    reg = server.registry
    metrics = server.metrics
    stats = metrics.stats()  # also forgets apps and models that are gone
    apps = []
    for name, app in sorted(reg.apps.items()):
        fig = metrics.apps.get(name)
        counts = stats["apps"].get(name, {})
        apps.append({"name": name, "input_type": app.input_type,
                     "slo_ms": app.slo_micros / 1000.0, "policy": app.policy,
                     "default_output": app.default_output, "cache_enabled": app.cache_enabled,
                     "models": list(reg.links.get(name, [])),
                     "counts": {k: counts.get(k, 0) for k in
                                ("prediction", "default", "shed", "error", "cache_hits",
                                 "cache_misses")},
                     "latency": list(fig.latency.counts) if fig is not None else None})
    models = []
    for key, mv in list(reg.models.items()):
        mq = server.scheduler.models.get(key)
        snap = mq.snapshot() if mq is not None else None
        cfg = server.batching.get(key)
        m = {"name": mv.name, "version": mv.version, "label": f"{mv.name}:{mv.version}",
             "current": reg.current.get(mv.name) == mv.version,
             "input_type": mv.input_type, "target_replicas": mv.replicas,
             "kind": mv.runtime.get("kind", ""), "gpus": list(mv.gpus),
             "batching": batching_json(cfg) if cfg is not None else None}
        if snap is not None:
            m.update(queue_depth=snap["queue_depth"], queue_capacity=snap["queue_capacity"],
                     queries=snap["admitted"], shed=snap["shed"], expired=snap["expired"],
                     errors=snap["errors"], batches=snap["batches"],
                     stats={k: (v["count"], v["sum"]) for k, v in snap["stats"].items()},
                     aimd={iid: r["batch_size"] for iid, r in snap["replicas"].items()},
                     connected=len(snap["replicas"]), up=mq.healthy_replicas())
        models.append(m)
    return {"t": time.monotonic(), "wall": time.time(), "latency_bounds": SECONDS_BUCKETS,
            "apps": apps, "models": models, "replicas": server.deployments.containers(),
            "selection": stats.get("selection", {}), "cache": stats.get("cache"),
            "events": list(events.events) if events is not None else []}


# ---------------------------------------------------------------------------- frames

def _rate(new: float, old: float | None, dt: float) -> float:
    if old is None or dt <= 0 or new < old:
        return 0.0
    return (new - old) / dt


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def derive(prev: dict | None, cur: dict) -> dict:
    """One frame for the page from two consecutive samples (``prev`` None: the first one)."""
    dt = cur["t"] - prev["t"] if prev is not None else 0.0
    bounds = cur["latency_bounds"]
    old_apps = {a["name"]: a for a in prev["apps"]} if prev is not None else {}
    old_models = {m["label"]: m for m in prev["models"]} if prev is not None else {}
    point: dict[str, Any] = {"t": cur["wall"], "apps": {}, "models": {}, "weights": {}}
    apps = []
    for a in cur["apps"]:
        o = old_apps.get(a["name"])
        c, oc = a["counts"], (o["counts"] if o is not None else {})
        rates = {k: round(_rate(c[k], oc.get(k), dt), 3) for k in c}
        answered = sum(rates[k] for k in ("prediction", "default", "shed", "error"))
        looked = rates["cache_hits"] + rates["cache_misses"]
        lat = None
        if a["latency"] is not None and o is not None:
            lat = delta(a["latency"], o["latency"])
        p50 = quantile(bounds, lat, 0.5) if lat else None
        p99 = quantile(bounds, lat, 0.99) if lat else None
        within = share_within(bounds, lat, a["slo_ms"] / 1000.0) if lat else None
        row = {k: a[k] for k in ("name", "input_type", "slo_ms", "policy", "default_output",
                                 "cache_enabled", "models")}
        row.update(rate=round(answered, 3), p50_ms=_ms(p50), p99_ms=_ms(p99),
                   within_slo=None if within is None else round(within, 4),
                   default_rate=rates["default"], shed_rate=rates["shed"],
                   error_rate=rates["error"],
                   cache_hit=round(rates["cache_hits"] / looked, 4) if looked else None,
                   totals=c)
        apps.append(row)
        point["apps"][a["name"]] = [row["rate"], row["p50_ms"], row["p99_ms"],
                                    row["within_slo"], a["slo_ms"], rates["default"],
                                    rates["shed"], rates["error"]]
    models = []
    for m in cur["models"]:
        o = old_models.get(m["label"])
        row = {k: v for k, v in m.items() if k not in ("stats", "aimd")}
        st = m.get("stats", {})
        ost = (o or {}).get("stats", {})
        batches = _pair_delta(st.get("batch_size"), ost.get("batch_size"))
        compute = _pair_delta(st.get("model_compute_s"), ost.get("model_compute_s"))
        aimd = m.get("aimd", {})
        row.update(
            rate=round(_rate(m.get("queries", 0), (o or {}).get("queries"), dt), 3),
            batch_mean=round(batches[1] / batches[0], 2) if batches[0] else None,
            compute_ms=_ms(compute[1] / compute[0]) if compute[0] else None,
            aimd=aimd, aimd_max=max(aimd.values()) if aimd else None)
        models.append(row)
        point["models"][m["label"]] = [row["batch_mean"], m.get("queue_depth", 0),
                                       row["compute_ms"], row["aimd_max"], row["rate"]]
    selection = {}
    old_sel = prev["selection"] if prev is not None else {}
    for app, s in cur["selection"].items():
        point["weights"][app] = {mod: f["weight"] for mod, f in s["models"].items()}
        old = old_sel.get(app, {}).get("models", {})
        selection[app] = dict(s, models={
            mod: dict(f, selected_rate=round(_rate(f["selected"], old.get(mod, {}).get(
                "selected"), dt), 3)) for mod, f in s["models"].items()})
    return {"t": cur["wall"], "dt": round(dt, 3), "apps": apps, "models": models,
            "replicas": cur["replicas"], "selection": selection, "cache": cur["cache"],
            "events": cur["events"], "point": point}


def _pair_delta(new: tuple | None, old: tuple | None) -> tuple[int, float]:
    if new is None:
        return 0, 0.0
    if old is None or new[0] < old[0]:
        return 0, 0.0  # the first sample of a model: no interval yet
    return new[0] - old[0], new[1] - old[1]


# ---------------------------------------------------------------------------- the feed

class Feed:
    """Builds a frame every ``interval_s`` while someone watches and hands the serialised
    frame to every watcher.  ``read`` returns a sample (see :func:`sample`)."""

    def __init__(self, read: Callable[[], dict], *, interval_s: float = 1.0,
                 history: int = HISTORY) -> None:
        self.read = read
        self.interval_s = interval_s
        self.history: collections.deque[bytes] = collections.deque(maxlen=history)
        self.watchers: set[asyncio.Queue] = set()
        self.latest: bytes | None = None
        self._prev: dict | None = None
        self._task: asyncio.Task | None = None
        self.closed = False
        #: CPU seconds the feed spent building and serialising frames, and how many
        self.cpu_s = 0.0
        self.frames = 0

    def watch(self) -> asyncio.Queue:
        """A queue that receives each frame (bytes), then None when the feed closes."""
        q: asyncio.Queue = asyncio.Queue(maxsize=4)
        self.watchers.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return q

    def unwatch(self, q: asyncio.Queue) -> None:
        self.watchers.discard(q)

    def history_json(self) -> bytes:
        """The points of the frames kept (oldest first) as one JSON array."""
        return b"[" + b",".join(self.history) + b"]"

    def tick(self) -> bytes:
        """Build, record and return one frame (what the loop does every interval)."""
        t0 = time.thread_time()
        cur = self.read()
        frame = derive(self._prev, cur)
        self._prev = cur
        frame["feed"] = {"frames": self.frames, "cpu_ms": round(self.cpu_s * 1000.0, 3),
                         "watchers": len(self.watchers)}
        data = orjson.dumps(frame, option=orjson.OPT_SERIALIZE_NUMPY
                            | orjson.OPT_NON_STR_KEYS)
        self.history.append(orjson.dumps(frame["point"]))
        self.latest = data
        self.frames += 1
        self.cpu_s += time.thread_time() - t0
        return data

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.watchers and not self.closed:
            try:
                data = self.tick()
            except Exception:  # never let the page's feed take anything else down
                log.server.exception("dashboard frame failed")
                data = None
            if data is not None:
                for q in list(self.watchers):
                    if q.full():  # a page that does not keep up misses frames, never piles
                        q.get_nowait()
                    q.put_nowait(data)
            next_at = max(next_at + self.interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())
        # nobody watches: the next watcher's first frame has no interval to compare with
        self._prev = None

    async def close(self) -> None:
        """End every watcher's stream (at server shutdown)."""
        self.closed = True
        for q in list(self.watchers):
            if q.full():
                q.get_nowait()
            q.put_nowait(None)
        if self._task is not None:
            await cancel_and_wait(self._task)
