"""Metrics: one store of figures, two views (Prometheus text at ``/metrics``, JSON at ``/stats``).

The query handlers count outcomes once per request (:meth:`Metrics.track`); the scheduler's
``on_batch_done`` hook feeds the per-model histograms once per batch; everything else (queue
depth, replicas, shed/expired/error counters, and each app's selection policy: how often it
chose each model, the model's current weight, the feedback it learned from) is read from the
scheduler's and the selection layer's own attributes when a scrape comes.  Nothing here runs per query beyond a few additions, and nothing takes a lock:
the event loop is the only writer.

Histograms are kept here rather than in ``prometheus_client.Histogram`` because one request or
one batch stands for ``n`` queries at once and the library's ``observe`` takes one value at a
time; the library still does the exposition (a custom collector in a per-server
``CollectorRegistry``), so the output is what every Prometheus scraper expects.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from .errors import ClipperError, Overloaded

if TYPE_CHECKING:
    from .predict import Outcome, QueryProcessor

#: latency buckets in seconds: 100 µs .. 10 s
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
OUTCOMES = ("prediction", "default", "shed", "error", "refused")
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: the scheduler's StatPairs, by the name they have in ``ModelQueue.stats`` and ``/stats``
MODEL_STATS = ("queue_delay_s", "batch_wait_s", "rpc_s", "model_compute_s", "batch_size")


class Histogram:
    """Bucket counts, count and sum; ``observe(value, n)`` records ``n`` equal observations."""

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, bounds: tuple) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n  # le: value <= bound
        self.count += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        acc = 0
        for bound, c in zip(self.bounds, self.counts):
            acc += c
            out.append((floatToGoString(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class AppFigures:
    """What the query handlers count for one application."""

    __slots__ = ("prediction", "default", "shed", "error", "refused", "cache_hits",
                 "cache_misses", "latency")

    def __init__(self) -> None:
        self.prediction = 0
        self.default = 0
        self.shed = 0
        self.error = 0
        #: refused at the edge before parsing (see edge.Edge.admit)
        self.refused = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.latency = Histogram(SECONDS_BUCKETS)

    def to_json(self) -> dict:
        return {"prediction": self.prediction, "default": self.default, "shed": self.shed,
                "error": self.error, "refused": self.refused, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "latency_s": {"count": self.latency.count, "sum": self.latency.sum}}


class ModelFigures:
    """Histograms of one model version, fed once per batch."""

    __slots__ = ("hists", "seen")

    def __init__(self) -> None:
        self.hists = {k: Histogram(BATCH_SIZE_BUCKETS if k == "batch_size" else SECONDS_BUCKETS)
                      for k in MODEL_STATS}
        #: (count, sum) of the per-query StatPairs already turned into histogram observations
        self.seen = {"queue_delay_s": (0, 0.0), "batch_wait_s": (0, 0.0)}


class Metrics:
    """The figures of one Clipper server and the per-server Prometheus registry that shows
    them.  ``cache_stats`` may be set to a callable returning ``{name: number}`` (entries,
    bytes, evictions, ...): each becomes a ``clipper_cache_<name>`` gauge and appears under
    ``"cache"`` in ``/stats``."""

    def __init__(self, proc: "QueryProcessor") -> None:
        self.proc = proc
        self.apps: dict[str, AppFigures] = {}
        self.models: dict[tuple, ModelFigures] = {}
        self.cache_stats: Callable[[], dict] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        sched = proc.scheduler
        previous = sched.on_batch_done

        def on_batch_done(mq: Any, n: int, latency: float, compute: float) -> None:
            self.on_batch(mq, n, latency, compute)
            if previous is not None:
                previous(mq, n, latency, compute)

        sched.on_batch_done = on_batch_done

    # ---------------------------------------------------------------- recording
    def _app(self, app: str) -> AppFigures:
        f = self.apps.get(app)
        if f is None:
            f = self.apps[app] = AppFigures()
        return f

    async def track(self, app: str, n: int, answers: Awaitable[list]) -> list:
        """Await the query processor's answers to ``n`` queries of ``app`` and count them:
        by outcome, cache hit, and end-to-end latency.  Errors count all ``n`` queries as
        ``error`` (``shed`` when admission control refused them) and propagate."""
        t0 = time.perf_counter()
        try:
            outcomes = await answers
        except ClipperError as e:
            self.failed(app, n, e)
            raise
        self.record(app, outcomes, time.perf_counter() - t0)
        return outcomes

    def failed(self, app: str, n: int, e: Exception) -> None:
        """``n`` queries of ``app`` answered with the error ``e`` (``shed`` when admission
        control refused them, else ``error``)."""
        if isinstance(e, Overloaded):
            self._app(app).shed += n
        else:
            self._app(app).error += n

    def refused(self, app: str) -> None:
        """One query refused at the edge, before its body was parsed."""
        self._app(app).refused += 1

    def record(self, app: str, outcomes: "list[Outcome]", latency_s: float) -> None:
        f = self._app(app)
        n = len(outcomes)
        defaults = shed = hits = misses = 0
        for o in outcomes:
            if o.default:
                if o.shed:
                    shed += 1
                else:
                    defaults += 1
            if o.cache_hit:
                hits += 1
            else:
                misses += 1
        f.prediction += n - defaults - shed
        f.default += defaults
        f.shed += shed
        f.cache_hits += hits
        f.cache_misses += misses
        f.latency.observe(latency_s, n)

    def on_batch(self, mq: Any, n: int, latency: float, compute: float) -> None:
        """The scheduler's ``on_batch_done``: one completed batch of ``n`` queries."""
        m = self.models.get(mq.key)
        if m is None:
            m = self.models[mq.key] = ModelFigures()
        h = m.hists
        h["rpc_s"].observe(latency)
        h["model_compute_s"].observe(compute)
        h["batch_size"].observe(n)
        # queue delay and batch wait are summed by the scheduler as queries leave the queue;
        # what accrued since the last batch goes in at its mean (the batch left together)
        for name, (seen_n, seen_sum) in m.seen.items():
            pair = mq.stats.get(name)
            if pair is None:
                continue
            dn = pair.count - seen_n
            if dn > 0:
                h[name].observe((pair.sum - seen_sum) / dn, dn)
                m.seen[name] = (pair.count, pair.sum)

    # ---------------------------------------------------------------- views
    def _prune(self) -> None:
        """Forget apps and model versions that no longer exist."""
        apps = self.proc.registry.apps
        for name in [a for a in self.apps if a not in apps]:
            del self.apps[name]
        models = self.proc.scheduler.models
        for key in [k for k in self.models if k not in models]:
            del self.models[key]

    def stats(self) -> dict:
        """The JSON view (``GET /stats``), read by the benchmark CLI."""
        self._prune()
        models = {}
        for mq in list(self.proc.scheduler.models.values()):
            d = {k: v.to_json() for k, v in mq.stats.items()}
            d.update(queue_depth=len(mq.queue), replicas=len(mq.replicas),
                     replicas_up=mq.healthy_replicas(), queries=mq.queries, shed=mq.shed,
                     expired=mq.expired, errors=mq.errors)
            models[mq.label] = d
        apps = {name: self._app(name).to_json() for name in self.proc.registry.apps}
        out = {"models": models, "apps": apps, "selection": self.selection()}
        cache = self._cache()
        if cache is not None:
            out["cache"] = cache
        return out

    def selection(self) -> dict:
        """Per app: its policy, feedback and policy-error counts, and per linked or ever
        selected model how often the policy chose it, its current weight (None where the
        policy gives none) and its feedback count and mean loss (``Selection.snapshot``)."""
        reg = self.proc.registry
        snap = self.proc.selection.snapshot(reg.links)
        out = {}
        for name, s in snap.items():
            if name not in reg.apps:
                continue
            models = {}
            for model, f in s["models"].items():
                w = f["weight"]  # a user policy's weights() may answer anything
                ok = isinstance(w, (int, float)) and not isinstance(w, bool)
                models[model] = dict(f, weight=float(w) if ok else None)
            out[name] = {"policy": s["policy"], "feedback": s["feedback"],
                         "policy_errors": s["policy_errors"], "models": models}
        return out

    def _cache(self) -> dict | None:
        if self.cache_stats is None:
            return None
        return {k: v for k, v in self.cache_stats().items()
                if isinstance(k, str) and _METRIC_NAME.match(k)
                and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Prometheus text (or OpenMetrics when the scraper asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _Collector:
    """Turns :class:`Metrics` and the scheduler's counters into metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []  # families are built at scrape time (the label sets change with apps)

    def collect(self) -> Iterator[Metric]:
        m = self.m
        m._prune()
        apps = [(name, m._app(name)) for name in m.proc.registry.apps]
        queries = CounterMetricFamily("clipper_queries", "Queries answered, by application "
                                      "and outcome (prediction, default, shed, error, refused)",
                                      labels=["app", "outcome"])
        hits = CounterMetricFamily("clipper_cache_hits", "Queries answered from the "
                                   "prediction cache", labels=["app"])
        misses = CounterMetricFamily("clipper_cache_misses", "Queries the prediction cache "
                                     "could not answer", labels=["app"])
        latency = HistogramMetricFamily("clipper_query_latency_seconds", "End-to-end latency "
                                        "of a query in the frontend, in seconds",
                                        labels=["app"])
        for name, f in apps:
            for outcome in OUTCOMES:
                queries.add_metric([name, outcome], getattr(f, outcome))
            hits.add_metric([name], f.cache_hits)
            misses.add_metric([name], f.cache_misses)
            latency.add_metric([name], f.latency.cumulative(), f.latency.sum)
        yield queries
        yield hits
        yield misses
        yield latency

        lbl = ["model", "version"]
        hist_help = {
            "queue_delay_s": ("clipper_queue_delay_seconds",
                              "Time a query waited in its model's queue, in seconds"),
            "batch_wait_s": ("clipper_batch_wait_seconds",
                             "Time delayed batching held a batch back to fill, in seconds"),
            "rpc_s": ("clipper_rpc_seconds",
                      "Time from sending a batch to a replica to its answer, in seconds"),
            "model_compute_s": ("clipper_model_compute_seconds",
                                "Time the model spent on a batch (measured in the container), "
                                "in seconds"),
            "batch_size": ("clipper_batch_size", "Queries per batch sent to a model"),
        }
        hists = {k: HistogramMetricFamily(n, h, labels=lbl) for k, (n, h) in hist_help.items()}
        depth = GaugeMetricFamily("clipper_queue_depth", "Queries waiting in a model's queue",
                                  labels=lbl)
        replicas = GaugeMetricFamily("clipper_replicas", "Connected replicas of a model "
                                     "version", labels=lbl)
        up = GaugeMetricFamily("clipper_replicas_up", "Connected replicas of a model version "
                               "that are not suspect (they answer)", labels=lbl)
        counters = {
            "queries": CounterMetricFamily("clipper_model_queries", "Queries queued for a "
                                           "model version", labels=lbl),
            "shed": CounterMetricFamily("clipper_model_shed", "Queries refused by a model "
                                        "version's full queue", labels=lbl),
            "expired": CounterMetricFamily("clipper_model_expired", "Queries whose deadline "
                                           "passed while queued", labels=lbl),
            "errors": CounterMetricFamily("clipper_model_errors", "Batches the model raised "
                                          "on", labels=lbl),
        }
        for mq in list(m.proc.scheduler.models.values()):
            key = list(mq.key)
            fig = m.models.get(mq.key) or ModelFigures()
            for k, fam in hists.items():
                h = fig.hists[k]
                fam.add_metric(key, h.cumulative(), h.sum)
            depth.add_metric(key, len(mq.queue))
            replicas.add_metric(key, len(mq.replicas))
            up.add_metric(key, mq.healthy_replicas())
            for attr, fam in counters.items():
                fam.add_metric(key, getattr(mq, attr))
        yield from hists.values()
        yield depth
        yield replicas
        yield up
        yield from counters.values()

        yield from _selection_families(m.selection())

        cache = m._cache()
        for k, v in (cache or {}).items():
            yield GaugeMetricFamily(f"clipper_cache_{k}", f"Prediction cache: {k}", value=v)


def _selection_families(sel: dict) -> Iterator[Metric]:
    """The selection layer's figures per app and model (see :meth:`Metrics.selection`)."""
    lbl = ["app", "model"]
    selected = CounterMetricFamily("clipper_model_selections", "Queries for which an app's "
                                   "selection policy chose a model", labels=lbl)
    weight = GaugeMetricFamily("clipper_policy_weight", "A model's current weight in its "
                               "app's selection policy", labels=lbl)
    feedback = CounterMetricFamily("clipper_model_feedback", "Feedback items that joined a "
                                   "model's prediction with a label", labels=lbl)
    loss = GaugeMetricFamily("clipper_model_feedback_mean_loss", "Mean loss of a model's "
                             "predictions over its app's feedback", labels=lbl)
    app_feedback = CounterMetricFamily("clipper_feedback", "Feedback items an app's policy "
                                       "learned from", labels=["app"])
    errors = CounterMetricFamily("clipper_policy_errors", "Times an app's policy raised (its "
                                 "queries got the default output)", labels=["app"])
    for app, s in sel.items():
        app_feedback.add_metric([app], s["feedback"])
        errors.add_metric([app], s["policy_errors"])
        for model, f in s["models"].items():
            key = [app, model]
            selected.add_metric(key, f["selected"])
            feedback.add_metric(key, f["feedback"])
            if f["weight"] is not None:
                weight.add_metric(key, f["weight"])
            if f["mean_loss"] is not None:
                loss.add_metric(key, f["mean_loss"])
    yield selected
    yield weight
    yield feedback
    yield loss
    yield app_feedback
    yield errors
