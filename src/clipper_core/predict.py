"""The query path between the HTTP handlers and the scheduler.

``QueryProcessor.predict`` looks up the app, parses each input once, asks the app's selection
policy which models answer it, and answers every input by the request's deadline: with the
combination of the predictions that arrived, or with the app's default output (flagged, with
an explanation) when none can arrive in time.  A slow or dead model never delays an answer past
the deadline; it only lowers the confidence.

Apps that enable the prediction cache look up every (model, version, input) there first: a
stored output answers at once, and a query identical to one being computed shares that
computation.  Only the rest is queued, one query per (input, model).

Apps with the default policy ``single`` take a fast path: one model, one query per input, no
policy call per query.

``QueryProcessor.feedback`` joins a label with the prediction each linked model made for the
input (the cached one when there is one, else computed now), and the app's policy learns
from it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Callable

from . import clock, log
from .cache import PredictionCache, key_prefix
from .config import DEFAULT_CACHE_BYTES, MAX_JSON_DEPTH, AppConfig, json_depth
from .errors import ClipperError, InvalidInput, Overloaded, PredictionTimeout, brief
from .inputs import PARSERS, describe, input_key
from .registry import Registry
from .scheduler import Scheduler, answer
from .timers import new_alarm
from .sched import Query
from .selection import MAX_UID_CHARS, AppSelection, Selection

MAX_BATCH_INPUTS = 10_000
#: feedback waits for the models at least this long (or the app's SLO, if longer)
FEEDBACK_TIMEOUT_S = 1.0


class Outcome:
    """The answer to one query, before formatting (a plain slotted class: one is built per
    query on the hot path, and a frozen dataclass costs three times as much to build)."""

    __slots__ = ("query_id", "output", "default", "explanation", "models", "confidence",
                 "cache_hit", "shed")

    def __init__(self, query_id: int, output: Any, default: bool,
                 explanation: str | None = None, models: tuple = (),
                 confidence: float = 1.0, cache_hit: bool = False, shed: bool = False) -> None:
        self.query_id = query_id
        self.output = output
        self.default = default
        self.explanation = explanation
        #: the models (``name:version``) whose predictions formed the answer
        self.models = models
        self.confidence = confidence
        #: answered from the prediction cache, without a model call
        self.cache_hit = cache_hit
        #: answered with the default because admission control refused the query (metrics)
        self.shed = shed

    def __repr__(self) -> str:
        return (f"Outcome(query_id={self.query_id!r}, output={self.output!r}, "
                f"default={self.default!r}, explanation={self.explanation!r}, "
                f"models={self.models!r}, confidence={self.confidence!r}, "
                f"cache_hit={self.cache_hit!r}, shed={self.shed!r})")

    def to_json(self) -> dict:
        d = {"query_id": self.query_id, "output": self.output, "default": self.default,
             "confidence": self.confidence, "models": list(self.models)}
        if self.default:
            d["default_explanation"] = self.explanation
        if self.cache_hit:
            d["cache_hit"] = True
        return d


def check_uid(uid: Any) -> str | None:
    """A user id is a string (or an integer, taken as its decimal string) of at most 256
    characters; None when absent."""
    if uid is None:
        return None
    if isinstance(uid, int) and not isinstance(uid, bool):
        return str(uid)
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID_CHARS:
        raise InvalidInput(f"'uid' must be a non-empty string of at most {MAX_UID_CHARS} "
                           f"characters (or an integer), got {brief(uid)}")
    return uid


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



class _Deadlines:
    """The deadlines of :meth:`QueryProcessor.ask_one`'s queries on one loop timer (an
    :class:`~clipper_core.timers.Alarm`) for the earliest: a heap of ``(deadline, seq,
    _One)``, where an answered query's entry is skipped when it comes up.  A timer per
    query, armed and then cancelled, cost uvloop 2 us, four times a heap push."""

    __slots__ = ("loop", "heap", "seq", "alarm", "live")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list = []
        self.seq = itertools.count()
        self.alarm = new_alarm(precise=True)
        #: entries whose query still waits (the others wait for their deadline to be popped)
        self.live = 0

    def add(self, when: float, one: "_One") -> None:
        heapq.heappush(self.heap, (when, next(self.seq), one))
        self.live += 1
        self.alarm.arm(self.loop, when, self._fire)
        if len(self.heap) > 4 * self.live + 1024:
            # long SLOs: drop the answered queries' entries rather than hold them that long
            self.heap = [e for e in self.heap if e[2].q is not None]
            heapq.heapify(self.heap)

    def answered(self) -> None:
        self.live -= 1

    def _fire(self) -> None:
        due = self.alarm.fired()
        now = clock.now()
        if due > now:
            now = due
        # (self.heap each time: an answer written here may serve the next request on its
        # connection, whose query is added, and may compact the heap into a new list)
        while self.heap and self.heap[0][0] <= now:
            one = heapq.heappop(self.heap)[2]
            if one.q is not None:
                self.live -= 1
                try:
                    one.give_up()
                except Exception:  # one query's fault must not stop the others' deadlines
                    log.server.exception("answering a query at its deadline failed")
        while self.heap and self.heap[0][2].q is None:
            heapq.heappop(self.heap)
        if self.heap:
            self.alarm.arm(self.loop, self.heap[0][0], self._fire)
        else:  # armed by a query added meanwhile, and answered since
            self.alarm.cancel()


class _One:
    """One query of :meth:`QueryProcessor.ask_one`: waits for its answer (a waiter of its
    :class:`SharedAnswer`) or its deadline (an entry of :class:`_Deadlines`), then calls
    ``done``; ``q`` is None once it did."""

    __slots__ = ("proc", "app", "key", "q", "done", "deadlines")

    def __init__(self, proc: "QueryProcessor", app: AppConfig, key: tuple, q: Query,
                 done: Any) -> None:
        self.proc = proc
        self.app = app
        self.key = key
        self.q = q
        self.done = done
        self.deadlines: _Deadlines | None = None  # where its deadline waits

    def count_down(self, n: int) -> None:  # the answer came
        self.deadlines.answered()
        self.finish(False)

    def give_up(self) -> None:  # the deadline came first
        q = self.q
        ws = q.future.waiters
        ws.pop(self, None)
        if not ws:
            q.answered = True  # nobody waits for it any more: never compute it
        self.finish(False)

    def finish(self, shed: bool) -> None:
        proc, app, key, q = self.proc, self.app, self.key, self.q
        fut = q.future
        out = err = None
        if fut.done():
            ok, val = fut.result()
        else:
            ok, val = False, proc._explain_miss(key, app.slo_micros / 1e3)
        if ok:
            proc.counts["prediction"] += 1
            out = Outcome(q.query_id, val, False, None, (f"{key[0]}:{key[1]}",))
        else:
            try:
                out = proc._default(app, q.query_id, val, shed)
            except ClipperError as e:
                err = e
        proc.selection.get(app).count_selected(key[0], 1)
        done = self.done
        self.q = self.done = None  # its deadline's entry holds nothing more
        try:
            done(out, err)
        except Exception:  # the answer's writer must not stop the batch's other answers
            log.server.exception("cannot answer query %d of app %s", q.query_id, app.name)


class QueryProcessor:
    """The query path.  ``cache`` is the prediction cache (one per server): apps with
    ``cache_enabled`` answer repeated inputs from it, and identical queries in flight share
    one model call.  ``selection`` holds every app's policy state."""

    def __init__(self, registry: Registry, scheduler: Scheduler,
                 cache: PredictionCache | None = None,
                 selection: Selection | None = None) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.cache = cache if cache is not None else PredictionCache(DEFAULT_CACHE_BYTES)
        self.selection = selection if selection is not None else Selection(registry.store)
        self._ids = itertools.count(1)
        self.counts = {"prediction": 0, "default": 0, "feedback": 0}
        #: the deadlines of ask_one's queries (made in the loop that serves them)
        self._deadlines: _Deadlines | None = None

    def route(self, app: AppConfig, version: str | None) -> tuple | None:
        """(model, version) that answers a single-model ``app``, or None when no model is
        linked."""
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

    @staticmethod
    def _slo_s(slo_s: float, timeout_ms: Any) -> float:
        if (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float))
                or timeout_ms <= 0):
            raise InvalidInput(f"timeout_ms must be a positive number of milliseconds, "
                               f"got {brief(timeout_ms)}")
        return min(slo_s, timeout_ms / 1e3)  # a request may only shorten the SLO

    def new_query_id(self) -> int:
        """A fresh query id (for answers made without this processor, such as refusals)."""
        return next(self._ids)

    async def predict(self, app_name: str, raw_inputs: list, *, version: Any = None,
                      timeout_ms: Any = None, uid: Any = None,
                      parsed: bool = False, arrival: float | None = None) -> list[Outcome]:
        """Answer every input by the deadline, counted from ``arrival`` (the loop's clock;
        default now).  ``parsed=True``: the inputs are already what the model receives (the
        OIP v2 decoder builds them from tensors)."""
        app = self.registry.get_app(app_name)
        slo_s = app.slo_micros / 1e6
        if timeout_ms is not None:
            slo_s = self._slo_s(slo_s, timeout_ms)
        if uid is not None:
            uid = check_uid(uid)
        if app.policy != "single":
            if version is not None:
                raise InvalidInput(f"'version' applies to apps that serve one model; app "
                                   f"{app.name!r} combines its linked models with policy "
                                   f"{app.policy!r} (set each model's version with "
                                   "set_model_version)")
            key = None
        else:
            key = self.route(app, version)
        if parsed:
            inputs = raw_inputs
        else:
            parse = PARSERS[app.input_type]
            inputs = [parse(x, app.name) for x in raw_inputs]  # all valid before any is queued
        if app.policy != "single":
            return await self._predict_policy(app, inputs, slo_s, uid, arrival)
        # one model: the fast path, inline (every call and coroutine here costs per query)
        ids = [next(self._ids) for _ in inputs]
        if key is None:
            why = self._explain_miss(None, slo_s * 1e3)
            return [self._default(app, qid, why) for qid in ids]
        loop = asyncio.get_running_loop()
        now = clock.now()
        if arrival is None or arrival > now:
            arrival = now
        deadline = arrival + slo_s
        label = (f"{key[0]}:{key[1]}",)
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
        submit = self.scheduler.submit
        for i, x in enumerate(inputs):
            qid = ids[i]
            if cache is not None:
                kb = prefix + input_key(input_type, x)
                val = cache.get(kb, now, max_age)
                if val is not miss:
                    out[i] = Outcome(qid, val, False, None, label, 1.0, True)
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
            q = Query(qid, x, arrival, deadline, fut)
            if cache is not None:
                fut.flight = cache.start_flight(kb, q)
            waits.append((i, qid, q))
            if not submit(key, q):
                if self._refused(key, q):
                    shed = shed if shed is not None else set()
                    shed.add(qid)
        if waits:
            late = await self._wait(loop, waits, deadline)
            why = None
            answered = 0
            for i, qid, q in waits:
                fut = q.future
                if fut.done() and (late is None or q not in late):
                    ok, val = fut.result()
                else:
                    ok = False
                    val = why = why or self._explain_miss(key, slo_s * 1e3)
                if ok:
                    answered += 1
                    out[i] = Outcome(qid, val, False, None, label)
                else:
                    out[i] = self._default(app, qid, val, shed is not None and qid in shed)
            self.counts["prediction"] += answered
        self.counts["prediction"] += len(out) - len(waits)  # the cache hits
        self.selection.get(app).count_selected(key[0], len(out))
        return out

    @staticmethod
    def takes_one(app: AppConfig) -> bool:
        """Whether ``app``'s queries can take :meth:`ask_one` (one model, no cache)."""
        return app.policy == "single" and not app.cache_enabled

    def ask_one(self, app: AppConfig, x: Any, arrival: float,
                done: "Callable[[Outcome | None, ClipperError | None], None]") -> bool:
        """The query path of one parsed input ``x`` of a single-model ``app`` that does not
        use the cache, without a coroutine: ``done(outcome, None)`` (or ``done(None,
        error)`` when there is neither a prediction nor a default output) is called exactly
        once, by the deadline counted from ``arrival``, as :meth:`predict` would answer.
        False (nothing done) for an app that does not take this path; it takes
        :meth:`predict`'s.  (The edge answers whole ``/predict`` requests this way.)"""
        if not self.takes_one(app):
            return False
        key = self.route(app, None)
        if key is None:
            return False
        loop = asyncio.get_running_loop()
        now = clock.now()
        if arrival > now:
            arrival = now
        fut = SharedAnswer(loop, self)
        q = Query(next(self._ids), x, arrival, arrival + app.slo_micros / 1e6, fut)
        one = _One(self, app, key, q, done)
        if self.scheduler.submit(key, q):
            fut.waiters[one] = 1
            deadlines = self._deadlines
            if deadlines is None or deadlines.loop is not loop:
                deadlines = self._deadlines = _Deadlines(loop)
            one.deadlines = deadlines
            deadlines.add(q.deadline, one)
        else:
            one.finish(self._refused(key, q))
        return True

    def _refused(self, key: tuple, q: Query) -> bool:
        """Answer a query the scheduler did not accept; True when admission control refused
        it (shed), False when the model version is not loaded."""
        mq = self.scheduler.models.get(key)
        # a shed query already has its answer from the scheduler, with the reason ("shed: ...")
        answer(q, (False, f"model {key[0]}:{key[1]} is not loaded"))
        return mq is not None

    def _ask(self, key: tuple, x: Any, qid: int, now: float, deadline: float,
             loop: asyncio.AbstractEventLoop, kb: bytes | None) -> tuple:
        """``(query, shed)``: the query that computes model ``key``'s output for ``x``, and
        whether admission control refused it.  With ``kb`` (the cache key; None when the app
        does not use the cache) an identical query in flight is shared; otherwise a new one
        is queued."""
        cache = self.cache
        if kb is not None:
            fl = cache.flight(kb)
            if fl is not None:
                q = fl.query
                if not q.answered:
                    cache.join(fl)
                    if q.deadline < deadline:
                        q.deadline = deadline
                    return q, False
                q.future.flight = None  # dropped by the scheduler unanswered: start afresh
                cache.end_flight(fl)
        fut = SharedAnswer(loop, self)
        q = Query(qid, x, now, deadline, fut)
        if kb is not None:
            fut.flight = cache.start_flight(kb, q)
        if self.scheduler.submit(key, q):
            return q, False
        return q, self._refused(key, q)

    async def _wait(self, loop: asyncio.AbstractEventLoop, waits: list,
                    deadline: float) -> set | None:
        """Wait until every query in ``waits`` (triples whose last item is the query) has its
        answer or ``deadline`` comes; returns the queries that had no answer at the deadline
        (None when all had one)."""
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

    # ---------------------------------------------------------------- selection policies
    async def _predict_policy(self, app: AppConfig, inputs: list, slo_s: float,
                              uid: str | None, arrival: float | None = None) -> list[Outcome]:
        sel = self.selection.get(app)
        ids = [next(self._ids) for _ in inputs]
        if sel.error is not None:
            return [self._default(app, qid, sel.error) for qid in ids]
        links = list(self.registry.links.get(app.name) or ())
        if not links:
            why = self._explain_miss(None, slo_s * 1e3)
            return [self._default(app, qid, why) for qid in ids]
        policy = sel.for_uid(uid)
        loop = asyncio.get_running_loop()
        now = clock.now()
        deadline = (now if arrival is None or arrival > now else arrival) + slo_s
        current = self.registry.current
        cache = self.cache if app.cache_enabled else None
        if cache is not None:
            input_type = app.input_type
            max_age = -1.0 if app.cache_ttl_s is None else float(app.cache_ttl_s)
            miss = cache.MISS
            prefixes: dict = {}
        waits: list = []  # (None, None, query) for _wait
        # per input: (query_id, selected names, [(name, key, query | None, cached output,
        # shed)], why)
        plans: list = []
        for qid, x in zip(ids, inputs):
            try:
                chosen = policy.select(links, uid)
                if not isinstance(chosen, (list, tuple)):
                    raise TypeError(f"select returned {type(chosen).__name__}, not a list")
            except Exception as e:
                plans.append((qid, (), [], self._policy_failed(sel, "select", e)))
                continue
            subs = []
            why = None
            ikey = None
            for name in chosen:
                v = current.get(name) if name in links else None
                if v is None:
                    why = (f"policy {app.policy!r} selected {name!r}, which is not a linked "
                           "model with a current version")
                    continue
                key = (name, v)
                sel.count_selected(name)
                kb = None
                if cache is not None:
                    if ikey is None:
                        ikey = input_key(input_type, x)
                    prefix = prefixes.get(key)
                    if prefix is None:
                        prefix = prefixes[key] = key_prefix(name, v, input_type)
                    kb = prefix + ikey
                    val = cache.get(kb, now, max_age)
                    if val is not miss:
                        subs.append((name, key, None, val, False))
                        continue
                q, shed = self._ask(key, x, qid, now, deadline, loop, kb)
                subs.append((name, key, q, None, shed))
                waits.append((None, None, q))
            if not subs and why is None:
                why = f"policy {app.policy!r} selected no model for this query"
            plans.append((qid, chosen, subs, why))
        late = await self._wait(loop, waits, deadline) if waits else None
        whys: dict = {}
        out = []
        for qid, chosen, subs, why in plans:
            preds = {}
            labels = []
            misses = []
            calls = 0
            all_shed = bool(subs)
            for name, key, q, val, shed in subs:
                if q is None:
                    ok = True  # from the cache
                else:
                    calls += 1
                    fut = q.future
                    if fut.done() and (late is None or q not in late):
                        ok, val = fut.result()
                    else:
                        ok = False
                        val = whys.get(key)
                        if val is None:
                            val = whys[key] = self._explain_miss(key, slo_s * 1e3)
                all_shed = all_shed and shed
                if ok:
                    preds[name] = val
                    labels.append(f"{key[0]}:{key[1]}")
                else:
                    misses.append(val)
            combined = None
            if preds:
                try:
                    combined = policy.combine(chosen, preds)
                    if combined is not None:
                        o, conf = combined
                        conf = float(conf)
                        conf = min(1.0, max(0.0, conf)) if conf == conf else 0.0  # NaN -> 0
                        combined = (o, conf)
                except Exception as e:
                    combined = None
                    why = self._policy_failed(sel, "combine", e)
            if combined is not None:
                out.append(Outcome(qid, combined[0], False, None, tuple(labels), combined[1],
                                   calls == 0))
                self.counts["prediction"] += 1
                continue
            if why is None:
                why = ("no selected model answered: " + "; ".join(dict.fromkeys(misses))
                       if misses else "the policy could not combine the predictions")
            out.append(self._default(app, qid, why, all_shed))
        return out

    def _policy_failed(self, sel: AppSelection, what: str, e: Exception) -> str:
        sel.errors += 1
        if sel.errors == 1 or sel.errors % 1000 == 0:  # logged once, then sparsely
            log.server.error("app %s: policy %s raised in %s (%d times so far): %s: %s",
                             sel.name, sel.config.policy, what, sel.errors,
                             type(e).__name__, e)
        return f"policy {sel.config.policy!r} failed in {what}: {type(e).__name__}: {e}"

    def _default(self, app: AppConfig, qid: int, why: str, shed: bool = False) -> Outcome:
        if app.default_output is None:
            err = Overloaded if shed else PredictionTimeout
            raise err(f"no prediction for app {app.name!r} ({why}) and the app has no "
                      "default output")
        self.counts["default"] += 1
        return Outcome(qid, app.default_output, True, why, (), 0.0, False, shed)

    # ---------------------------------------------------------------- feedback
    async def predictions_for_feedback(self, app: AppConfig, x: Any) -> dict[str, Any]:
        """``{model name: output}``: what each linked model (its current version) predicts
        for the parsed input ``x``.  A prediction the cache holds is taken as it is (the one
        the model made when the input was queried; no model call); the others are computed,
        sharing a computation in flight for the same input.  Models that give no prediction
        within max(SLO, FEEDBACK_TIMEOUT_S) are left out."""
        reg = self.registry
        links = reg.links.get(app.name) or ()
        keys = [(m, reg.current[m]) for m in links if m in reg.current]
        found: dict[str, Any] = {}
        if not keys:
            return found
        ikey = None
        if app.cache_enabled:
            input_type = app.input_type
            ikey = input_key(input_type, x)
            lookup = self.cache.lookup_versions
            for name, v in keys:
                got = lookup(name, [v], input_type, ikey)
                if v in got:
                    found[name] = got[v]
            keys = [k for k in keys if k[0] not in found]
            if not keys:
                return found
        loop = asyncio.get_running_loop()
        now = clock.now()
        slo_s = max(app.slo_micros / 1e6, FEEDBACK_TIMEOUT_S)
        deadline = now + slo_s
        qid = next(self._ids)
        waits = []
        for key in keys:
            kb = None if ikey is None else key_prefix(key[0], key[1], input_type) + ikey
            q, _ = self._ask(key, x, qid, now, deadline, loop, kb)
            waits.append((key, qid, q))
        late = await self._wait(loop, waits, deadline)
        for key, _, q in waits:
            fut = q.future
            if fut.done() and (late is None or q not in late):
                ok, val = fut.result()
                if ok:
                    found[key[0]] = val
        return found

    async def feedback(self, app_name: str, raw_input: Any, label: Any, *,
                       uid: Any = None) -> dict:
        """Teach the app's policy that ``label`` is the answer for ``raw_input``."""
        app = self.registry.get_app(app_name)
        uid = check_uid(uid)
        sel = self.selection.get(app)
        x = PARSERS[app.input_type](raw_input, app.name)
        if sel.error is not None:
            raise PredictionTimeout(f"feedback for app {app.name!r} not used: {sel.error}")
        if json_depth(label) > MAX_JSON_DEPTH:
            raise InvalidInput(f"'label' is nested more than {MAX_JSON_DEPTH} levels deep")
        try:
            sel.policy.check_label(label)
        except InvalidInput:
            raise
        except Exception as e:  # a user policy's own check
            raise InvalidInput(f"'label' rejected by policy {app.policy!r}: "
                               f"{type(e).__name__}: {e}") from None
        links = list(self.registry.links.get(app.name) or ())
        if not links:
            raise PredictionTimeout(f"feedback for app {app.name!r} not used: no model is "
                                    "linked to it")
        preds = await self.predictions_for_feedback(app, x)
        if not preds:
            raise PredictionTimeout(
                f"feedback for app {app.name!r} not used: none of its models ("
                f"{', '.join(links)}) gave a prediction for this input within "
                f"{max(app.slo_micros / 1e6, FEEDBACK_TIMEOUT_S) * 1e3:g} ms; try again")
        try:
            losses = sel.observe(uid, links, preds, label)
        except Exception as e:
            # the predictions are there and the label passed the policy's check: what the
            # policy cannot score is this label (a 400 naming it, not a retryable 503)
            why = self._policy_failed(sel, "observe", e)
            raise InvalidInput(f"feedback for app {app.name!r} not used: the 'label' "
                               f"({describe(label)}) could not be scored: {why}") from None
        self.counts["feedback"] += 1
        return {"success": True, "uid": uid, "losses": losses,
                "missing": [m for m in links if m not in preds]}
