"""The query path between the HTTP handlers and the scheduler.

``QueryProcessor.predict`` looks up the app, parses each input once, asks the app's selection
policy which models answer it, queues one query per (input, model) and answers every input by
the request's deadline: with the combination of the predictions that arrived, or with the
app's default output (flagged, with an explanation) when none can arrive in time.  A slow or
dead model never delays an answer past the deadline; it only lowers the confidence.

Apps with the default policy ``single`` take a fast path: one model, one query per input, no
policy call per query.

``QueryProcessor.feedback`` joins a label with the prediction each linked model makes for the
input, and the app's policy learns from it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from . import log
from .config import AppConfig
from .errors import InvalidInput, PredictionTimeout
from .inputs import PARSERS
from .registry import Registry
from .scheduler import Scheduler, answer
from .sched import Query
from .selection import MAX_UID_CHARS, AppSelection, Selection

MAX_BATCH_INPUTS = 10_000
#: feedback waits for the models at least this long (or the app's SLO, if longer)
FEEDBACK_TIMEOUT_S = 1.0


class Outcome:
    """The answer to one query, before formatting (a plain slotted class: one is built per
    query on the hot path, and a frozen dataclass costs three times as much to build)."""

    __slots__ = ("query_id", "output", "default", "explanation", "models", "confidence")

    def __init__(self, query_id: int, output: Any, default: bool,
                 explanation: str | None = None, models: tuple = (),
                 confidence: float = 1.0) -> None:
        self.query_id = query_id
        self.output = output
        self.default = default
        self.explanation = explanation
        #: the models (``name:version``) whose predictions formed the answer
        self.models = models
        self.confidence = confidence

    def __repr__(self) -> str:
        return (f"Outcome(query_id={self.query_id!r}, output={self.output!r}, "
                f"default={self.default!r}, explanation={self.explanation!r}, "
                f"models={self.models!r}, confidence={self.confidence!r})")

    def to_json(self) -> dict:
        d = {"query_id": self.query_id, "output": self.output, "default": self.default,
             "confidence": self.confidence, "models": list(self.models)}
        if self.default:
            d["default_explanation"] = self.explanation
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
                           f"characters (or an integer), got {uid!r:.80}")
    return uid


class QueryProcessor:
    def __init__(self, registry: Registry, scheduler: Scheduler,
                 selection: Selection | None = None) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.selection = selection if selection is not None else Selection(registry.store)
        self._ids = itertools.count(1)
        self.counts = {"prediction": 0, "default": 0, "feedback": 0}

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
                               f"got {timeout_ms!r}")
        return min(slo_s, timeout_ms / 1e3)  # a request may only shorten the SLO

    def _refused(self, key: tuple, q: Query) -> None:
        mq = self.scheduler.models.get(key)
        answer(q, (False, "the model's queue is full (overload)" if mq is not None
                   else f"model {key[0]}:{key[1]} is not loaded"))

    def _submit(self, key: tuple, q: Query) -> None:
        if not self.scheduler.submit(key, q):
            self._refused(key, q)

    async def _wait(self, queries: list, deadline: float, keys: Any, slo_ms: float) -> None:
        """Until every query is answered, or the deadline answers the rest."""
        loop = asyncio.get_running_loop()
        timer = loop.call_at(deadline, self._expire, queries, keys, slo_ms)
        try:
            if len(queries) == 1:
                await queries[0].future
            else:
                await asyncio.gather(*(q.future for q in queries))
        finally:
            timer.cancel()
            for q in queries:
                q.answered = True  # a cancelled request must not be computed

    def _expire(self, queries: list, keys: Any, slo_ms: float) -> None:
        """At the deadline: answer what is left.  ``keys`` is one model key for all
        ``queries``, or a list of one key per query."""
        whys: dict = {}
        one = isinstance(keys, tuple)
        for i, q in enumerate(queries):
            if not q.answered:
                key = keys if one else keys[i]
                why = whys.get(key)
                if why is None:
                    why = whys[key] = self._explain_miss(key, slo_ms)
                answer(q, (False, why))

    async def predict(self, app_name: str, raw_inputs: list, *, version: Any = None,
                      timeout_ms: Any = None, uid: Any = None) -> list[Outcome]:
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
            return await self._predict_policy(app, raw_inputs, slo_s, uid)
        # one model: the fast path, inline (every call and coroutine here costs per query)
        key = self.route(app, version)
        parse = PARSERS[app.input_type]
        parsed = [parse(x, app.name) for x in raw_inputs]  # all valid before any is queued
        ids = [next(self._ids) for _ in parsed]
        if key is None:
            why = self._explain_miss(None, slo_s * 1e3)
            return [self._default(app, qid, why) for qid in ids]
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + slo_s
        queries = []
        submit = self.scheduler.submit
        for qid, x in zip(ids, parsed):
            q = Query(qid, x, now, deadline, loop.create_future())
            if not submit(key, q):
                self._refused(key, q)
            queries.append(q)
        timer = loop.call_at(deadline, self._expire, queries, key, slo_s * 1e3)
        try:
            if len(queries) == 1:
                await queries[0].future
            else:
                await asyncio.gather(*(q.future for q in queries))
        finally:
            timer.cancel()
            for q in queries:
                q.answered = True  # a cancelled request must not be computed
        label = (f"{key[0]}:{key[1]}",)
        out = []
        answered = 0
        for q in queries:
            ok, val = q.future.result()
            if ok:
                answered += 1
                out.append(Outcome(q.query_id, val, False, None, label))
            else:
                out.append(self._default(app, q.query_id, val))
        self.counts["prediction"] += answered
        self.selection.get(app).count_selected(key[0], len(queries))
        return out

    # ---------------------------------------------------------------- selection policies
    async def _predict_policy(self, app: AppConfig, raw_inputs: list, slo_s: float,
                              uid: str | None) -> list[Outcome]:
        sel = self.selection.get(app)
        parse = PARSERS[app.input_type]
        parsed = [parse(x, app.name) for x in raw_inputs]
        ids = [next(self._ids) for _ in parsed]
        if sel.error is not None:
            return [self._default(app, qid, sel.error) for qid in ids]
        links = list(self.registry.links.get(app.name) or ())
        if not links:
            why = self._explain_miss(None, slo_s * 1e3)
            return [self._default(app, qid, why) for qid in ids]
        policy = sel.for_uid(uid)
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + slo_s
        current = self.registry.current
        queries: list = []
        keys: list = []
        plans: list = []  # per input: (query_id, selected names, [(name, key, query)], why)
        for qid, x in zip(ids, parsed):
            try:
                chosen = policy.select(links, uid)
                if not isinstance(chosen, (list, tuple)):
                    raise TypeError(f"select returned {type(chosen).__name__}, not a list")
            except Exception as e:
                plans.append((qid, (), [], self._policy_failed(sel, "select", e)))
                continue
            subs = []
            why = None
            for name in chosen:
                v = current.get(name) if name in links else None
                if v is None:
                    why = (f"policy {app.policy!r} selected {name!r}, which is not a linked "
                           "model with a current version")
                    continue
                key = (name, v)
                q = Query(qid, x, now, deadline, loop.create_future())
                self._submit(key, q)
                subs.append((name, key, q))
                queries.append(q)
                keys.append(key)
                sel.count_selected(name)
            if not subs and why is None:
                why = f"policy {app.policy!r} selected no model for this query"
            plans.append((qid, chosen, subs, why))
        if queries:
            await self._wait(queries, deadline, keys, slo_s * 1e3)
        out = []
        for qid, chosen, subs, why in plans:
            preds = {}
            labels = []
            misses = []
            for name, key, q in subs:
                ok, val = q.future.result()
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
                out.append(Outcome(qid, combined[0], False, None, tuple(labels), combined[1]))
                self.counts["prediction"] += 1
                continue
            if why is None:
                why = ("no selected model answered: " + "; ".join(dict.fromkeys(misses))
                       if misses else "the policy could not combine the predictions")
            out.append(self._default(app, qid, why))
        return out

    def _policy_failed(self, sel: AppSelection, what: str, e: Exception) -> str:
        sel.errors += 1
        if sel.errors == 1 or sel.errors % 1000 == 0:  # logged once, then sparsely
            log.server.error("app %s: policy %s raised in %s (%d times so far): %s: %s",
                             sel.name, sel.config.policy, what, sel.errors,
                             type(e).__name__, e)
        return f"policy {sel.config.policy!r} failed in {what}: {type(e).__name__}: {e}"

    def _default(self, app: AppConfig, qid: int, why: str) -> Outcome:
        if app.default_output is None:
            raise PredictionTimeout(f"no prediction for app {app.name!r} ({why}) and the app "
                                    "has no default output")
        self.counts["default"] += 1
        return Outcome(qid, app.default_output, True, why, (), 0.0)

    # ---------------------------------------------------------------- feedback
    async def predictions_for_feedback(self, app: AppConfig, x: Any) -> dict[str, Any]:
        """``{model name: output}``: what each linked model (its current version) predicts
        for the parsed input ``x``.  Models that give no prediction within
        max(SLO, FEEDBACK_TIMEOUT_S) are left out."""
        links = self.registry.links.get(app.name) or ()
        keys = [(m, self.registry.current[m]) for m in links if m in self.registry.current]
        found: dict[str, Any] = {}
        # PREDICTION CACHE: look up each key's (model, version, input) entry here first and
        # move the hits into ``found``; only the misses below are computed.
        if not keys:
            return found
        loop = asyncio.get_running_loop()
        now = loop.time()
        slo_s = max(app.slo_micros / 1e6, FEEDBACK_TIMEOUT_S)
        deadline = now + slo_s
        queries = []
        qid = next(self._ids)
        for key in keys:
            q = Query(qid, x, now, deadline, loop.create_future())
            self._submit(key, q)
            queries.append(q)
        await self._wait(queries, deadline, keys, slo_s * 1e3)
        for key, q in zip(keys, queries):
            ok, val = q.future.result()
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
            why = self._policy_failed(sel, "observe", e)
            raise PredictionTimeout(f"feedback for app {app.name!r} not used: {why}") from None
        self.counts["feedback"] += 1
        return {"success": True, "uid": uid, "losses": losses,
                "missing": [m for m in links if m not in preds]}
