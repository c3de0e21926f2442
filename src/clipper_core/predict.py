"""The query path between the HTTP handlers and the scheduler.

``QueryProcessor.predict`` resolves the app's route, parses each input once, queues one query
per input and answers every one of them by the request's deadline: with the model's output, or
with the app's default output (flagged, with an explanation) when no answer can arrive in time.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from . import log
from .cache import PredictionCache, key_prefix
from .config import DEFAULT_CACHE_BYTES, AppConfig
from .errors import InvalidInput, Overloaded, PredictionTimeout
from .inputs import PARSERS, input_key
from .registry import Registry
from .scheduler import Scheduler, answer
from .sched import Query

MAX_BATCH_INPUTS = 10_000


@dataclass(frozen=True)
class Outcome:
    """The answer to one query, before formatting."""

    query_id: int
    output: Any
    default: bool
    explanation: str | None = None
    model: str | None = None
    #: answered from the prediction cache, without a model call
    cache_hit: bool = False
    #: answered with the default because admission control refused the query (metrics)
    shed: bool = False

    def to_json(self) -> dict:
        d = {"query_id": self.query_id, "output": self.output, "default": self.default}
        if self.default:
            d["default_explanation"] = self.explanation
        if self.cache_hit:
            d["cache_hit"] = True
        return d


class SharedAnswer(asyncio.Future):
    """The future of one scheduled query, shared by every request waiting for its input.

    The scheduler resolves it with ``(ok, output)``.  Resolving it stores a successful output in
    the prediction cache and counts down each waiting request at once, without an extra trip
    through the event loop.
    """

    __slots__ = ("waiters", "flight", "proc")

    def __init__(self, loop: asyncio.AbstractEventLoop, proc: "QueryProcessor") -> None:
        super().__init__(loop=loop)
        #: the requests waiting for it -> how many of their inputs it answers
        self.waiters: dict = {}
        #: the cache's Flight while identical queries may join; None once it ended
        self.flight = None
        self.proc = proc

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        if self.flight is not None:
            self.proc._land(self, result)
        for w, n in self.waiters.items():
            w.count_down(n)


class _Waiter:
    """One request waiting for ``left`` more answers; ``late`` is set when it stops waiting
    at its deadline."""

    __slots__ = ("future", "left", "late")

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.left = 0
        self.late: set | None = None

    def count_down(self, n: int) -> None:
        self.left -= n
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)


class QueryProcessor:
    """The query path.  ``cache`` is the prediction cache (one per server): apps with
    ``cache_enabled`` answer repeated inputs from it, and identical queries in flight share
    one model call."""

    def __init__(self, registry: Registry, scheduler: Scheduler,
                 cache: PredictionCache | None = None) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.cache = cache if cache is not None else PredictionCache(DEFAULT_CACHE_BYTES)
        self._ids = itertools.count(1)
        self.counts = {"prediction": 0, "default": 0}

    def route(self, app: AppConfig, version: str | None) -> tuple | None:
        """(model, version) that answers ``app``, or None when no model is linked."""
        links = self.registry.links.get(app.name)
        if not links:
            return None
        name = links[0]
        if version is None:
            version = self.registry.current.get(name)
            if version is None:
                return None
        else:
            if isinstance(version, bool) or not isinstance(version, (str, int)):
                raise InvalidInput(f"'version' must be a string (or an integer) naming a "
                                   f"version of model {name!r}, got {type(version).__name__}")
            if not isinstance(version, str):
                version = str(version)
            self.registry.get_model(name, version)  # UnknownVersion names the versions
        return (name, version)

    def _explain_miss(self, key: tuple | None, slo_ms: float) -> str:
        if key is None:
            return "no model is linked to this application"
        mq = self.scheduler.models.get(key)
        if mq is None or not mq.replicas:
            return f"no replica of model {key[0]}:{key[1]} is connected"
        if not mq.healthy_replicas():
            return f"no healthy replica of model {key[0]}:{key[1]}"
        return f"model {key[0]}:{key[1]} did not answer within the deadline ({slo_ms:g} ms)"

    async def predict(self, app_name: str, raw_inputs: list, *, version: Any = None,
                      timeout_ms: Any = None, parsed: bool = False) -> list[Outcome]:
        """Answer every input by the deadline.  ``parsed=True``: the inputs are already what
        the model receives (the OIP v2 decoder builds them from tensors)."""
        app = self.registry.get_app(app_name)
        slo_s = app.slo_micros / 1e6
        if timeout_ms is not None:
            if (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float))
                    or timeout_ms <= 0):
                raise InvalidInput(f"timeout_ms must be a positive number of milliseconds, "
                                   f"got {timeout_ms!r}")
            slo_s = min(slo_s, timeout_ms / 1e3)  # a request may only shorten the SLO
        key = self.route(app, version)
        if parsed:
            inputs = raw_inputs
        else:
            parse = PARSERS[app.input_type]
            inputs = [parse(x, app.name) for x in raw_inputs]  # all valid before any is queued
        ids = [next(self._ids) for _ in inputs]
        if key is None:
            why = self._explain_miss(None, slo_s * 1e3)
            return [self._default(app, qid, why) for qid in ids]
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + slo_s
        label = f"{key[0]}:{key[1]}"
        out: list = [None] * len(inputs)
        # (position, query id, the scheduled query answering it): the query is this request's
        # own, or one in flight for the same input that this request joins
        waits: list = []
        shed: set | None = None
        cache = self.cache if app.cache_enabled else None
        if cache is not None:
            input_type = app.input_type
            prefix = key_prefix(key[0], key[1], input_type)
            max_age = -1.0 if app.cache_ttl_s is None else float(app.cache_ttl_s)
            miss = cache.MISS
        for i, x in enumerate(inputs):
            qid = ids[i]
            if cache is not None:
                kb = prefix + input_key(input_type, x)
                val = cache.get(kb, now, max_age)
                if val is not miss:
                    out[i] = Outcome(qid, val, False, None, label, True)
                    continue
                fl = cache.flight(kb)
                if fl is not None:  # the same input is being computed: share its answer
                    q = fl.query
                    if not q.answered:
                        cache.join(fl)
                        if q.deadline < deadline:
                            q.deadline = deadline  # computed while anyone still waits for it
                        waits.append((i, qid, q))
                        continue
                    # dropped by the scheduler (expired) without an answer: start afresh
                    q.future.flight = None
                    cache.end_flight(fl)
            fut = SharedAnswer(loop, self)
            q = Query(qid, x, now, deadline, fut)
            if cache is not None:
                fut.flight = cache.start_flight(kb, q)
            waits.append((i, qid, q))
            if not self.scheduler.submit(key, q):
                if key in self.scheduler.models:
                    # shed by admission control: the scheduler answered it ("shed: ...")
                    shed = shed if shed is not None else set()
                    shed.add(qid)
                answer(q, (False, f"model {key[0]}:{key[1]} is not loaded"))
        if waits:
            late = await self._wait(loop, waits, deadline)
            why = None
            for i, qid, q in waits:
                fut = q.future
                if fut.done() and (late is None or q not in late):
                    ok, val = fut.result()
                else:
                    ok = False
                    val = why = why or self._explain_miss(key, slo_s * 1e3)
                if ok:
                    self.counts["prediction"] += 1
                    out[i] = Outcome(qid, val, False, None, label)
                else:
                    out[i] = self._default(app, qid, val, label,
                                           shed is not None and qid in shed)
        self.counts["prediction"] += len(out) - len(waits)  # the cache hits
        return out

    async def _wait(self, loop: asyncio.AbstractEventLoop, waits: list,
                    deadline: float) -> set | None:
        """Wait until every query in ``waits`` has its answer or ``deadline`` comes; returns
        the queries that had no answer at the deadline (None when all had one)."""
        w = _Waiter(loop.create_future())
        for _, _, q in waits:
            fut = q.future
            if not fut.done():
                ws = fut.waiters
                ws[w] = ws.get(w, 0) + 1
                w.left += 1
        if not w.left:
            return None
        timer = loop.call_at(deadline, self._give_up, w, waits)
        try:
            await w.future
        finally:
            timer.cancel()
            if w.left and w.late is None:  # cancelled (the client went away)
                self._give_up(w, waits)
        return w.late

    def _give_up(self, w: "_Waiter", waits: list) -> None:
        """Stop waiting for the queries still unanswered; an answer that comes later is not
        this request's (it has its default output by then)."""
        late = set()
        for _, _, q in waits:
            fut = q.future
            if fut.done():
                continue
            late.add(q)
            ws = fut.waiters
            ws.pop(w, None)
            if not ws:  # nobody waits any more: never compute it, stop sharing it
                q.answered = True
                fl = fut.flight
                if fl is not None:
                    fut.flight = None
                    self.cache.end_flight(fl)
        w.late = late
        if not w.future.done():
            w.future.set_result(None)

    def _land(self, fut: "SharedAnswer", result: Any) -> None:
        fl = fut.flight
        fut.flight = None
        try:
            ok, val = result
            self.cache.finish(fl, ok, val, fut.get_loop().time())
        except Exception:  # a broken output must not stop the batch's other answers
            log.server.exception("cannot store an output of %r in the prediction cache",
                                 fl.key[:64])

    def _default(self, app: AppConfig, qid: int, why: str, label: str | None = None,
                 shed: bool = False) -> Outcome:
        if app.default_output is None:
            err = Overloaded if shed else PredictionTimeout
            raise err(f"no prediction for app {app.name!r} ({why}) and the app has no "
                      "default output")
        self.counts["default"] += 1
        return Outcome(qid, app.default_output, True, why, label, shed=shed)
