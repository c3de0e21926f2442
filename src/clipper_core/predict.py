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

from .config import AppConfig
from .errors import InvalidInput, PredictionTimeout
from .inputs import PARSERS
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

    def to_json(self) -> dict:
        d = {"query_id": self.query_id, "output": self.output, "default": self.default}
        if self.default:
            d["default_explanation"] = self.explanation
        return d


class QueryProcessor:
    def __init__(self, registry: Registry, scheduler: Scheduler) -> None:
        self.registry = registry
        self.scheduler = scheduler
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
                      timeout_ms: Any = None) -> list[Outcome]:
        app = self.registry.get_app(app_name)
        slo_s = app.slo_micros / 1e6
        if timeout_ms is not None:
            if (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float))
                    or timeout_ms <= 0):
                raise InvalidInput(f"timeout_ms must be a positive number of milliseconds, "
                                   f"got {timeout_ms!r}")
            slo_s = min(slo_s, timeout_ms / 1e3)  # a request may only shorten the SLO
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
        for qid, x in zip(ids, parsed):
            q = Query(qid, x, now, deadline, loop.create_future())
            if not self.scheduler.submit(key, q):
                mq = self.scheduler.models.get(key)
                answer(q, (False, "the model's queue is full (overload)" if mq is not None
                           else f"model {key[0]}:{key[1]} is not loaded"))
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
        label = f"{key[0]}:{key[1]}"
        out = []
        for q in queries:
            ok, val = q.future.result()
            if ok:
                self.counts["prediction"] += 1
                out.append(Outcome(q.query_id, val, False, None, label))
            else:
                out.append(self._default(app, q.query_id, val, label))
        return out

    def _expire(self, queries: list, key: tuple, slo_ms: float) -> None:
        why = None
        for q in queries:
            if not q.answered:
                why = why or self._explain_miss(key, slo_ms)
                answer(q, (False, why))

    def _default(self, app: AppConfig, qid: int, why: str, label: str | None = None) -> Outcome:
        if app.default_output is None:
            raise PredictionTimeout(f"no prediction for app {app.name!r} ({why}) and the app "
                                    "has no default output")
        self.counts["default"] += 1
        return Outcome(qid, app.default_output, True, why, label)
