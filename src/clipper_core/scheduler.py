"""The batching scheduler: asyncio glue around the compiled core in ``sched``.

One :class:`ModelQueue` per (model, version) holds the core :class:`~clipper_core.sched.Batcher`
(deadline-ordered queue, admission control, delayed batching) and the replicas serving that
version, each with its :class:`~clipper_core.sched.BatchSizer` (AIMD).  A free replica pulls a
batch; the answer resolves each query's future with ``(True, output)``, and anything that
prevents an answer resolves it with ``(False, explanation)`` so that the frontend substitutes
the app's default output.  The scheduler never waits on the network: sending is a non-blocking
call of the RPC transport and answers arrive through :meth:`Scheduler.on_result`.

Every decision that depends on time lives in the sans-IO core and takes ``now``; this module
only owns the timers (delayed batching, RPC timeouts), the replicas and the futures.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from clipper_rpc import protocol as P

from . import clock as _clock, log, sched
from .timers import Alarm, new_alarm
from .errors import ConfigError

ModelKey = tuple  # (model name, version)

#: what a query's future resolves to
Answer = tuple  # (True, output) | (False, explanation)

#: how many recent (batch size, batch latency) pairs each model keeps for percentiles
RECENT_BATCHES = 2048

#: how late the event loop may get to a due timer, s: its timer (a timerfd, see
#: :mod:`clipper_core.timers`) wakes it within tens of microseconds, but the loop may be
#: writing answers and reading requests then.  A busy replica's next batch goes this much
#: before its measured lead: a batch that arrives after the replica freed up leaves it idle
#: (with a model whose batch takes half the SLO, 0.3 ms of idle per batch costs about 3 % of
#: its goodput), one that arrives early holds the queries that came meanwhile back a batch
TIMER_SLACK = 0.0005


def _number(name: str, value: Any, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False, hi_open: bool = False) -> None:
    ok_type = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if ok_type and (value > lo if lo_open else value >= lo) and (
            value < hi if hi_open else value <= hi):
        return
    kind = "an integer" if integer else "a number"
    lo_s = f"{lo} <" if lo_open else f"{lo} <="
    hi_s = f"< {hi}" if hi_open else f"<= {hi}"
    raise ConfigError(f"{name} must be {kind} with {lo_s} {name} {hi_s}, got {value!r}")


@dataclass(frozen=True)
class BatchingConfig:
    """Per-model batching parameters; replaced as a whole at run time (``set_batching``)."""

    #: -1 = adaptive (AIMD), N = fixed maximum batch size (never exceeded)
    batch_size: int = -1
    #: share of a query's SLO one batch may take (queueing and transfer need the rest);
    #: the AIMD budget of a batch is this times the tightest SLO among its queries
    budget_fraction: float = 0.5
    #: delayed batching: wait at most this long, from the oldest queued query's arrival, for a
    #: batch to fill; None = derived from the SLO (5 % of it, at most 2 ms)
    batch_wait_s: float | None = None
    #: batches in flight per replica, at most: a replica that works on a batch is sent the
    #: next just in time, so that it never waits for the round trip (1: one at a time, for
    #: a model that cannot take a second batch early).  A third and further go only with a
    #: fixed batch size (an adaptive one grows instead) to a replica whose transfer time is
    #: measured, and only while the work it already holds is expected to end within that
    #: time: batches shorter than their transfer (a fast model at batch size 1) then travel
    #: several at a time, a few per wake-up of each side's threads, at 0.7x the CPU per query
    #: of two in flight
    max_in_flight: int = 8
    aimd_step: int = 2
    aimd_backoff: float = 0.9
    aimd_cap: int = 1024
    aimd_initial: int = 1
    #: RPC timeout of a batch; None = 4x the replica's measured batch latency times its
    #: batches in flight, at least 50 ms (before the first measurement: 1 s, or twice the SLO)
    rpc_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size != -1:
            _number("batch_size", self.batch_size, 1, 100_000, integer=True)
        _number("budget_fraction", self.budget_fraction, 0.0, 1.0, lo_open=True)
        if self.batch_wait_s is not None:
            _number("batch_wait_s", self.batch_wait_s, 0.0, 10.0)
        _number("max_in_flight", self.max_in_flight, 1, 64, integer=True)
        _number("aimd_step", self.aimd_step, 1, 100_000, integer=True)
        _number("aimd_backoff", self.aimd_backoff, 0.0, 1.0, lo_open=True, hi_open=True)
        _number("aimd_cap", self.aimd_cap, 1, 100_000, integer=True)
        _number("aimd_initial", self.aimd_initial, 1, 100_000, integer=True)
        if self.rpc_timeout_s is not None:
            _number("rpc_timeout_s", self.rpc_timeout_s, 0.0, 3600.0, lo_open=True)

    def wait_for(self, slo_s: float) -> float:
        """The delayed-batching bound for a model whose tightest SLO is ``slo_s``."""
        if self.batch_wait_s is not None:
            return self.batch_wait_s
        return min(0.002, 0.05 * slo_s)

    def replace(self, **changes: Any) -> "BatchingConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown batching parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class StatPair:
    """count and sum of an observed quantity (read by the stats and metrics endpoints)."""

    __slots__ = ("count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0

    def add(self, value: float, n: int = 1) -> None:
        self.count += n
        self.sum += value

    def to_json(self) -> dict:
        return {"count": self.count, "sum": self.sum}


class Replica:
    """One container replica of a model version, as the frontend sees it.

    ``suspect`` (missed an RPC timeout) and ``draining`` (being stopped) both keep new batches
    away; the sizer's ``available`` flag mirrors them for admission control.
    """

    __slots__ = ("identity", "instance_id", "key", "pid", "info", "in_flight", "last_seen",
                 "_suspect", "_draining", "sizer", "batches", "errors",
                 "timeouts", "drained", "proven", "answered_at")

    def __init__(self, identity: bytes, instance_id: str, key: ModelKey, pid: int, info: dict,
                 sizer: Any, now: float) -> None:
        self.identity = identity
        self.instance_id = instance_id
        self.key = key
        self.pid = pid
        self.info = info
        self.in_flight: dict[int, InFlight] = {}
        self.last_seen = now
        self._suspect = False
        self._draining = False
        self.sizer = sizer
        self.batches = 0
        self.errors = 0
        self.timeouts = 0
        #: set by :meth:`Scheduler.drain`: resolves once the replica owes no batch
        self.drained: asyncio.Future | None = None
        #: False until the replica has been heard from after registering (its first
        #: heartbeat or an answer); until then it is suspect and gets no batch, so a peer that
        #: registers and stays silent never takes queries
        self.proven = False
        #: stopwatch time of the replica's last answer (see ``InFlight.service``)
        self.answered_at = -math.inf

    @property
    def suspect(self) -> bool:
        return self._suspect

    @suspect.setter
    def suspect(self, value: bool) -> None:
        self._suspect = bool(value)
        self.sizer.available = not (self._suspect or self._draining)

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = bool(value)
        self.sizer.available = not (self._suspect or self._draining)

    def stats(self) -> dict:
        s = self.sizer
        return {"batch_size": s.current, "latency_s": s.latency, "suspect": self._suspect,
                "draining": self._draining, "in_flight": len(self.in_flight),
                "batches": self.batches, "errors": self.errors, "timeouts": self.timeouts,
                "aimd_increases": s.increases, "aimd_decreases": s.decreases,
                # the part of a round trip that is not the model's compute (-1: not measured)
                "transfer_s": s.lead}

    def to_json(self) -> dict:
        return {"instance_id": self.instance_id, "model_name": self.key[0],
                "model_version": self.key[1], "pid": self.pid, "suspect": self._suspect,
                "draining": self._draining,
                "in_flight": len(self.in_flight), "batch_size": self.sizer.current,
                "batches": self.batches, "errors": self.errors, "info": self.info}


class InFlight:
    __slots__ = ("batch_id", "replica", "queries", "sent_at", "started", "budget", "timer",
                 "timed_out", "probe", "service", "idle")

    def __init__(self, batch_id: int, replica: Replica, queries: list, sent_at: float,
                 started: float, budget: float) -> None:
        self.batch_id = batch_id
        self.replica = replica
        self.queries = queries
        self.sent_at = sent_at  # loop clock
        self.started = started  # stopwatch, for the batch latency
        self.budget = budget
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out = False
        #: set for a warm-up call (:meth:`Scheduler.probe`): resolves with an Answer
        self.probe: asyncio.Future | None = None
        #: set when answered: what the batch cost the replica, from when it could start on
        #: it (its previous answer, when this batch was sent while that one was in flight)
        #: to this answer.  The round trip would count the wait behind the other batch as
        #: this batch's cost, and admission would reckon the replica twice as slow as it is
        self.service = 0.0
        #: whether the replica had nothing else in flight when this batch was sent: then
        #: its round trip is the compute plus the transfer, nothing waited for
        self.idle = not replica.in_flight


class ModelQueue:
    """Queue and replicas of one model version, and the counters the metrics layer reads."""

    def __init__(self, key: ModelKey, input_type: str, capacity: int, cfg: BatchingConfig,
                 slo_s: float, impl: Any = None, precise: bool = False) -> None:
        self.impl = impl or sched.impl
        self.key = key
        self.label = f"{key[0]}:{key[1]}"
        self.input_type = input_type
        self.cfg = cfg
        self.slo_s = slo_s
        self.core = self.impl.Batcher(capacity, cfg.wait_for(slo_s), cfg.budget_fraction)
        self.queue = self.core.queue
        self.replicas: dict[str, Replica] = {}
        #: replicas in round-robin order, and their sizers (what admission control reads)
        self.order: list[Replica] = []
        self.sizers: list = []
        #: the delayed-batching bound of the batch waiting to fill
        self.wait: Alarm = new_alarm(precise)
        #: when a busy replica is due its next batch (just before it answers)
        self.pipe: Alarm = new_alarm(precise)
        self.waiting_since = -1.0
        self.rr = 0
        # counters for the metrics layer (the core holds admitted / shed / expired)
        self.errors = 0
        self.timeouts = 0
        self.requeued = 0
        self.batches = 0
        self.stats = {k: StatPair() for k in (
            "queue_delay_s", "batch_wait_s", "rpc_s", "model_compute_s", "batch_size")}
        #: (batch size, batch latency in s) of the latest batches, for percentiles
        self.recent: collections.deque = collections.deque(maxlen=RECENT_BATCHES)

    # read-only views of the core's counters
    @property
    def queries(self) -> int:
        return self.core.admitted

    @property
    def shed(self) -> int:
        """Queries answered at once with the default: at admission (queue full, deadline
        out of reach) or at dispatch (the batch would come back too late)."""
        return self.core.shed_late + self.core.shed_full + self.queue.late

    @property
    def expired(self) -> int:
        return self.queue.expired

    @property
    def budget_s(self) -> float:
        """The AIMD budget for a batch of queries with this model's tightest SLO."""
        return max(1e-4, self.slo_s * self.cfg.budget_fraction)

    @property
    def batch_wait_s(self) -> float:
        return self.core.batch_wait

    def new_sizer(self) -> Any:
        c = self.cfg
        return self.impl.BatchSizer(c.batch_size, c.aimd_initial, c.aimd_step, c.aimd_backoff,
                                    self.budget_s, c.aimd_cap)

    def healthy_replicas(self) -> int:
        return sum(1 for r in self.order if not r.suspect and not r.draining)

    def _add(self, r: Replica) -> None:
        self.replicas[r.instance_id] = r
        self.order.append(r)
        self.sizers.append(r.sizer)

    def _remove(self, r: Replica) -> None:
        if self.replicas.get(r.instance_id) is r:
            del self.replicas[r.instance_id]
        if r in self.order:
            self.order.remove(r)
            self.sizers.remove(r.sizer)

    def shed_reason(self, verdict: int) -> str:
        if verdict == self.impl.FULL:
            return (f"shed: the queue of model {self.label} is full "
                    f"({self.queue.capacity} queries waiting)")
        lat = [s.latency for s in self.sizers if s.available and s.latency > 0]
        mean = sum(lat) / len(lat) if lat else 0.0
        return (f"shed: deadline cannot be met: {self.core.last_ahead} queries are ahead and "
                f"the replicas of model {self.label} can answer about "
                f"{self.core.last_capacity} by then (batch latency {mean * 1e3:.1f} ms)")

    def snapshot(self, recent: bool = False) -> dict:
        """Counters and gauges as plain JSON (queue depth, shed, expired, per-replica AIMD
        size, count+sum statistics); ``recent`` adds the latest (size, latency) pairs."""
        core = self.core
        d = {
            "model_name": self.key[0], "model_version": self.key[1],
            "queue_depth": len(self.queue), "queue_capacity": self.queue.capacity,
            "admitted": core.admitted, "shed": self.shed, "shed_late": core.shed_late,
            "shed_full": core.shed_full, "expired": self.queue.expired,
            "late": self.queue.late,
            "errors": self.errors, "timeouts": self.timeouts, "requeued": self.requeued,
            "batches": self.batches, "budget_s": core.last_budget or self.budget_s,
            # delayed batching: batches let go before the bound (waiting could not fill
            # them) and waits started
            "dispatched_early": core.early, "waits": core.held,
            "batch_wait_bound_s": core.batch_wait,
            "replicas": {r.instance_id: r.stats() for r in self.order},
            "stats": {k: v.to_json() for k, v in self.stats.items()},
            "batching": self.cfg.to_json(),
        }
        if recent:
            d["recent_batches"] = [list(p) for p in self.recent]
        return d


def _resolve(fut: asyncio.Future, value: Answer) -> None:
    if not fut.done():
        fut.set_result(value)


def _reanchor(r: Replica, now: float) -> None:
    """When the busy replica ``r`` is expected to answer: its batches still out, from
    ``now``.  Done at every answer, so that estimates that were too long do not pile up
    ahead of the clock while the replica never goes idle (two batches in flight)."""
    s = r.sizer
    s.busy_until = now + sum(s.expected(len(f.queries)) for f in r.in_flight.values())


def _settle(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(True)


def answer(q: Any, value: Answer) -> None:
    """Resolve ``q`` once; later answers (a straggler's, a timer's) are ignored."""
    if q.answered:
        return
    q.answered = True
    fut = q.future
    if not fut.done():
        fut.set_result(value)


class Scheduler:
    """All model queues, the replicas that serve them and the batches in flight.

    ``clock`` and ``loop`` can be injected (tests drive it on virtual time); ``impl`` picks the
    core module (default: what :mod:`clipper_core.sched` chose, compiled unless
    ``CLIPPER_PUREPYTHON=1``).  Deadlines and decisions read the frontend's clock
    (:func:`clipper_core.clock.now`, which the loop's timers count on too); batch latencies
    are measured with ``time.perf_counter`` unless a clock is injected.
    """

    def __init__(self, send: Callable[[bytes, list], bool], *, queue_capacity: int = 20_000,
                 clock: Callable[[], float] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, impl: Any = None) -> None:
        self._send = send
        self._loop = loop or asyncio.get_event_loop()
        self._clock = clock or _clock.now
        #: timers on timerfds (:mod:`clipper_core.timers`), on real time only
        self.precise = clock is None
        self._stopwatch = clock or time.perf_counter
        self.impl = impl or sched.impl
        self._ADMIT = self.impl.ADMIT
        self.queue_capacity = queue_capacity
        self.models: dict[ModelKey, ModelQueue] = {}
        self._by_identity: dict[bytes, Replica] = {}
        self._batches: dict[int, InFlight] = {}
        self._batch_ids = itertools.count(1)
        self._expired: list = []
        #: called after each answered batch: (model queue, batch size, latency s, compute s)
        self.on_batch_done: Callable[[ModelQueue, int, float, float], None] | None = None
        self.on_replica_change: Callable[[ModelKey], None] | None = None
        #: versions removed while this frontend ran: their replicas are told to stop
        self.removed: set[ModelKey] = set()

    # ---------------------------------------------------------------- models
    def ensure_model(self, key: ModelKey, input_type: str, cfg: BatchingConfig,
                     slo_s: float) -> ModelQueue:
        mq = self.models.get(key)
        if mq is None:
            self.removed.discard(key)
            mq = self.models[key] = ModelQueue(key, input_type, self.queue_capacity, cfg, slo_s,
                                               self.impl, self.precise)
        elif cfg != mq.cfg or slo_s != mq.slo_s:
            self.configure(key, cfg, slo_s)
        return mq

    def configure(self, key: ModelKey, cfg: BatchingConfig | None = None,
                  slo_s: float | None = None) -> None:
        """Change batching parameters at run time.  Replicas keep their learned AIMD size
        (within a new cap); a fixed batch size applies to the next batch."""
        mq = self.models[key]
        if cfg is not None:
            mq.cfg = cfg
        if slo_s is not None:
            mq.slo_s = slo_s
        c = mq.cfg
        mq.core.configure(c.wait_for(mq.slo_s), c.budget_fraction)
        for r in mq.order:
            r.sizer.reconfigure(c.batch_size, c.aimd_step, c.aimd_backoff, c.aimd_cap)
        self._dispatch(mq)

    def remove_model(self, key: ModelKey, explanation: str = "model version removed") -> None:
        mq = self.models.pop(key, None)
        if mq is None:
            return
        self.removed.add(key)
        for r in list(mq.order):
            self._drop_replica(mq, r, explanation, requeue=False)
        # now=-inf: every queued query comes out as "live", none as expired
        for q in mq.queue.pop_batch(float("-inf"), len(mq.queue), []):
            answer(q, (False, explanation))
        mq.wait.close()
        mq.pipe.close()

    # ---------------------------------------------------------------- queries
    def submit(self, key: ModelKey, q: Any) -> bool:
        """Queue ``q`` for model version ``key``.

        False when it cannot be queued: unknown version, or shed by admission control (queue
        full, or its deadline cannot be met given the queue ahead of it and the replicas'
        measured batch latency).  A shed query is answered here with ``(False, "shed: ...")``;
        the caller answers the others.
        """
        mq = self.models.get(key)
        if mq is None:
            return False
        expired = self._expired
        verdict = mq.core.admit(q, self._clock(), mq.sizers, expired)
        if expired:
            self._expire(mq, expired, -1.0)
        if verdict != self._ADMIT:
            answer(q, (False, mq.shed_reason(verdict)))
            return False
        self._dispatch(mq)
        return True

    def _expire(self, mq: ModelQueue, expired: list, now: float) -> None:
        """Answer queries taken out of the queue without a batch: past their deadline, or
        (at dispatch, ``now`` given) due before the batch could come back."""
        late = None
        for q in expired:
            if q.deadline > now >= 0:
                if late is None:
                    late = (f"shed: deadline cannot be met: a batch of model {mq.label} takes "
                            f"about {(mq.core.last_horizon - now) * 1e3:.1f} ms")
                answer(q, (False, late))
            else:
                answer(q, (False, f"deadline passed while queued for model {mq.label}"))
        expired.clear()

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self, mq: ModelQueue, force: bool = False, due: float = 0.0) -> None:
        """Give replicas batches: every idle replica first (round robin), then, up to
        ``max_in_flight``, to a busy one just before it answers (``Batcher.dispatch_at``), so
        that it has its next batch at hand when it is free.  ``force``: the delayed-batching
        timer ran out, the first batch to an idle replica goes without waiting for it to
        fill.  ``due``: the time the timer that calls it was armed for, which has come even
        when the clock reads earlier (a ``loop.call_at`` alarm, on a virtual clock or
        without a timerfd, may run up to half a millisecond early on uvloop: without it,
        the timer would be armed again, and fire again, until the clock turned)."""
        queue = mq.queue
        order = mq.order
        if not len(queue) or not order:
            return
        now = self._clock()
        if due > now:
            now = due
        core = mq.core
        n = len(order)
        start = mq.rr
        expired = self._expired
        for depth in range(mq.cfg.max_in_flight):
            busy = depth > 0
            deeper = False  # whether a replica may take a batch at the next depth
            for i in range(n):
                r = order[(start + i) % n]
                if r._suspect or r._draining:
                    continue
                held = len(r.in_flight)
                if held != depth:
                    if held > depth:
                        deeper = True
                    continue
                if depth > 1 and (r.sizer.lead < 0.0 or not r.sizer.fixed):
                    continue  # more than two: a fixed size, a measured transfer (see cfg)
                if not len(queue):
                    return
                if busy or not force:
                    # (an idle replica's busy_until is when it answered its last batch; a
                    # busy one's, when it is expected to answer)
                    s = r.sizer
                    when = core.dispatch_at(now, s.current, busy, s.busy_until,
                                            s.lead + TIMER_SLACK if s.lead >= 0.0 else s.lead,
                                            s.fixed_share(),
                                            s.expected(s.current))
                    if when > now:
                        if busy:
                            if when < math.inf:
                                self._arm_pipe(mq, when)
                            continue  # else its answer comes first (and dispatches again)
                        if mq.waiting_since < 0:
                            mq.waiting_since = now
                        self._arm_wait(mq, when)
                        return
                batch = core.take(now, r.sizer, expired)
                if expired:
                    self._expire(mq, expired, now)
                if not batch:
                    continue
                force = False
                mq.wait.cancel()  # the wait it timed is over
                mq.rr = (start + i + 1) % n
                if not self._send_batch(mq, r, batch, now):
                    return  # the replica is gone; _drop_replica dispatched again
                deeper = True
            if not deeper:
                return

    def _arm_wait(self, mq: ModelQueue, when: float) -> None:
        mq.wait.arm(self._loop, when, self._wait_done, mq)

    def _arm_pipe(self, mq: ModelQueue, when: float) -> None:
        mq.pipe.arm(self._loop, when, self._pipe_due, mq)

    def _pipe_due(self, mq: ModelQueue) -> None:
        due = mq.pipe.fired()
        if self.models.get(mq.key) is mq:
            self._dispatch(mq, due=due)

    def _wait_done(self, mq: ModelQueue) -> None:
        mq.wait.fired()
        if self.models.get(mq.key) is mq:
            self._dispatch(mq, force=True)

    def _send_batch(self, mq: ModelQueue, r: Replica, batch: list, now: float) -> bool:
        batch_id = next(self._batch_ids)
        core = mq.core
        n = len(batch)
        try:
            frames = P.encode_predict(batch_id, mq.input_type, [q.input for q in batch])
        except Exception as e:  # an input the codec cannot carry: answer, don't crash
            log.batching.error("cannot encode a batch for %s: %s", mq.label, e)
            core.returned(n, now)
            for q in batch:
                answer(q, (False, f"input could not be sent to the model: {e}"))
            return True
        st = mq.stats
        st["queue_delay_s"].add(now * n - core.last_arrivals, n)
        if mq.waiting_since >= 0:
            st["batch_wait_s"].add(now - mq.waiting_since)
            mq.waiting_since = -1.0
        else:
            st["batch_wait_s"].add(0.0)
        if not self._send(r.identity, frames):
            log.batching.warning("replica %s of %s unreachable; removing it", r.instance_id,
                                 mq.label)
            core.returned(n, now)
            for q in batch:
                mq.queue.requeue(q)
            self._drop_replica(mq, r, "replica unreachable")
            return False
        fl = InFlight(batch_id, r, batch, now, self._stopwatch(), core.last_budget)
        r.in_flight[batch_id] = fl
        self._batches[batch_id] = fl
        s = r.sizer
        s.busy_until = (s.busy_until if s.busy_until > now else now) + s.expected(n)
        # RPC timeout: generous against this replica's own measured latency.  It does not
        # follow the queries' deadlines: a query past its deadline already has its default
        # from the frontend, and blaming the replica for a deadline the queue consumed would
        # make it suspect and shrink its batches for nothing.
        if mq.cfg.rpc_timeout_s is not None:
            timeout = mq.cfg.rpc_timeout_s
        elif s.batches:
            timeout = max(0.05, 4 * s.latency * len(r.in_flight))
        else:  # nothing measured yet (a first batch may load the model): be patient
            timeout = max(1.0, 2 * (core.last_latest - now))
        fl.timer = self._loop.call_at(now + timeout, self._on_timeout, batch_id)
        return True

    # ---------------------------------------------------------------- warm-up calls
    def probe(self, r: Replica, inputs: list, timeout_s: float) -> asyncio.Future:
        """Send ``inputs`` (already parsed; empty = a protocol-level probe that the container
        answers without calling the model) to replica ``r`` alone, outside the queue.

        The future resolves with ``(True, outputs)`` or ``(False, explanation)``: the replica
        raised, missed ``timeout_s``, or was lost.
        """
        fut = self._loop.create_future()
        mq = self.models.get(r.key)
        if mq is None or mq.replicas.get(r.instance_id) is not r:
            fut.set_result((False, f"replica {r.instance_id} is not connected"))
            return fut
        batch_id = next(self._batch_ids)
        try:
            frames = P.encode_predict(batch_id, mq.input_type, inputs)
        except Exception as e:
            fut.set_result((False, f"the warm-up input cannot be sent to the model: {e}"))
            return fut
        if not self._send(r.identity, frames):
            fut.set_result((False, f"replica {r.instance_id} is unreachable"))
            return fut
        now = self._clock()
        fl = InFlight(batch_id, r, [], now, self._stopwatch(), 0.0)
        fl.probe = fut
        r.in_flight[batch_id] = fl
        self._batches[batch_id] = fl
        fl.timer = self._loop.call_at(now + timeout_s, self._on_timeout, batch_id)
        return fut

    def _after_probe(self, r: Replica) -> None:
        mq = self.models.get(r.key)
        if mq is not None:
            self._dispatch(mq)

    # ---------------------------------------------------------------- answers
    def _finish(self, identity: bytes, batch_id: int) -> tuple[InFlight, Replica] | None:
        fl = self._batches.get(batch_id)
        r = self._by_identity.get(identity)
        if fl is None or r is None or fl.replica is not r:
            return None  # unknown, forgotten, or another peer's batch
        del self._batches[batch_id]
        r.in_flight.pop(batch_id, None)
        answered = self._stopwatch()
        fl.service = answered - (r.answered_at if r.answered_at > fl.started else fl.started)
        r.answered_at = answered
        if fl.timer is not None:
            fl.timer.cancel()
        if fl.probe is None and not fl.timed_out:  # a timeout counted them back already
            mq = self.models.get(r.key)
            if mq is not None:
                mq.core.returned(len(fl.queries), self._clock())
        now = self._clock()
        r.last_seen = now
        if not r.in_flight:
            r.sizer.busy_until = now
            if r.drained is not None:
                _settle(r.drained)
        else:
            _reanchor(r, now)
        if r._suspect:
            if r.proven:
                log.batching.info("replica %s answered again; no longer suspect",
                                  r.instance_id)
            r.proven = True
            r.suspect = False
        return fl, r

    def on_result(self, identity: bytes, msg: P.Result) -> bool:
        done = self._finish(identity, msg.batch_id)
        if done is None:
            return False
        fl, r = done
        if fl.probe is not None:
            _resolve(fl.probe, (True, msg.outputs))
            self._after_probe(r)
            return True
        queries = fl.queries
        n = len(queries)
        if len(msg.outputs) != n:
            return self.on_error(identity, P.Error(
                msg.batch_id, "ProtocolError",
                f"the replica returned {len(msg.outputs)} outputs for a batch of {n}"), done)
        # taken before the answers: resolving a future may write the answer out at once (the
        # edge's direct path), which is not the replica's round trip
        latency = self._stopwatch() - fl.started
        # answered from here on (a copy of a query requeued by a timeout must not go out
        # again with the next batch), resolved once that batch is sent
        fresh = []
        for q, out in zip(queries, msg.outputs):
            if not q.answered:
                q.answered = True
                fresh.append((q.future, out))
        compute = msg.compute_us / 1e6
        r.batches += 1
        if not fl.timed_out:  # a timeout already backed off; one overrun, one decrease
            # AIMD by the model's cost when the container reported it (compute_us > 0)
            r.sizer.observe(n, fl.service, fl.budget, compute if msg.compute_us > 0 else -1.0,
                            latency if fl.idle else -1.0)
            if r.in_flight:  # again, with what this batch taught the sizer
                _reanchor(r, self._clock())
        mq = self.models.get(r.key)
        try:
            if mq is not None:
                mq.batches += 1
                st = mq.stats
                st["rpc_s"].add(latency)
                st["batch_size"].add(n)
                st["model_compute_s"].add(compute)
                mq.recent.append((n, latency))
                # the replica's next batch before this one's answers: writing them out
                # takes the event loop tens of us each, and a replica whose pipelined batch
                # had not gone yet would sit idle for all of it
                self._dispatch(mq)
        finally:  # marked answered above: whatever happened, they get their answers
            for fut, out in fresh:
                if not fut.done():
                    fut.set_result((True, out))
        if mq is not None and self.on_batch_done is not None:
            self.on_batch_done(mq, n, latency, compute)
        return True

    def on_error(self, identity: bytes, msg: P.Error, done: Any = None) -> bool:
        done = done or self._finish(identity, msg.batch_id)
        if done is None:
            return False
        fl, r = done
        mq = self.models.get(r.key)
        label = mq.label if mq else f"{r.key[0]}:{r.key[1]}"
        if fl.probe is not None:
            log.batching.error("warm-up call of replica %s of %s raised %s: %s\n%s",
                               r.instance_id, label, msg.error, msg.message, msg.traceback)
            _resolve(fl.probe, (False, f"model {label} raised {msg.error}: {msg.message}"))
            self._after_probe(r)
            return True
        r.errors += 1
        log.batching.error("model %s raised %s: %s (replica %s)\n%s", label, msg.error,
                           msg.message, r.instance_id, msg.traceback)
        for q in fl.queries:
            answer(q, (False, f"model {label} raised {msg.error}: {msg.message}"))
        if mq is not None:
            mq.errors += 1
            self._dispatch(mq)
        return True

    def _on_timeout(self, batch_id: int) -> None:
        fl = self._batches.get(batch_id)
        if fl is None:
            return
        r = fl.replica
        fl.timer = None
        fl.timed_out = True
        if fl.probe is not None:
            self._batches.pop(batch_id, None)
            r.in_flight.pop(batch_id, None)
            _resolve(fl.probe, (False, f"replica {r.instance_id} did not answer the warm-up "
                                       "call in time"))
            self._after_probe(r)
            return
        r.timeouts += 1
        mq = self.models.get(r.key)
        if not r._suspect:
            log.batching.warning("replica %s missed the RPC timeout of batch %d; suspect until "
                                 "it answers or heartbeats", r.instance_id, batch_id)
        r.suspect = True
        r.sizer.overrun()
        if mq is None:
            return
        mq.timeouts += 1
        mq.core.returned(len(fl.queries), self._clock())
        self._requeue(mq, fl.queries)
        self._dispatch(mq)

    def _requeue(self, mq: ModelQueue, queries: list) -> None:
        """Put unanswered queries whose deadline still allows back into the queue."""
        now = self._clock()
        for q in queries:
            if not q.answered and q.deadline > now:
                mq.queue.requeue(q)
                mq.requeued += 1

    # ---------------------------------------------------------------- replicas
    def add_replica(self, identity: bytes, reg: P.Register) -> Replica | None:
        key = (reg.model_name, reg.model_version)
        mq = self.models.get(key)
        if mq is None:
            return None
        if mq.input_type != reg.input_type:
            log.rpc.error("replica %s of %s declares input type %s, the model has %s; refused",
                          reg.instance_id, mq.label, reg.input_type, mq.input_type)
            return None
        now = self._clock()
        old = mq.replicas.get(reg.instance_id)
        if old is not None:
            # a reconnect: the old socket's batches are lost, re-send their queries
            self._drop_replica(mq, old, "replica reconnected", notify=False)
        stale = self._by_identity.get(identity)
        if stale is not None and stale is not old:
            smq = self.models.get(stale.key)
            if smq is not None:
                self._drop_replica(smq, stale, "identity reused", notify=False)
            else:
                del self._by_identity[identity]
        r = Replica(identity, reg.instance_id, key, reg.pid, reg.info, mq.new_sizer(), now)
        r.suspect = True  # in rotation once heard from again (see Replica.proven)
        mq._add(r)
        self._by_identity[identity] = r
        log.rpc.info("replica %s of %s registered (pid %d)", reg.instance_id, mq.label, reg.pid)
        if self.on_replica_change:
            self.on_replica_change(key)
        self._dispatch(mq)
        return r

    def touch(self, identity: bytes) -> bool:
        """A heartbeat.  A suspect replica that heartbeats is idle: the batches that timed
        out there are lost (their queries were requeued), and it takes batches again."""
        r = self._by_identity.get(identity)
        if r is None:
            return False
        now = r.last_seen = self._clock()
        if r._suspect:
            for batch_id, fl in list(r.in_flight.items()):
                if fl.timed_out:
                    del r.in_flight[batch_id]
                    self._batches.pop(batch_id, None)
            if not r.in_flight:
                r.sizer.busy_until = now
                if r.drained is not None:
                    _settle(r.drained)
            if r.proven:
                log.batching.info("replica %s heartbeats again; no longer suspect",
                                  r.instance_id)
            r.proven = True
            r.suspect = False
            mq = self.models.get(r.key)
            if mq is not None:
                self._dispatch(mq)
        return True

    def knows(self, identity: bytes) -> bool:
        """Whether ``identity`` is a registered replica's socket."""
        return identity in self._by_identity

    def drain(self, instance_id: str) -> asyncio.Future | None:
        """Give a replica no new batches; the future resolves once it owes none (at once when
        idle, or when it is removed).  None for a replica that is not registered."""
        r = self.replica_by_instance(instance_id)
        if r is None:
            return None
        r.draining = True
        if r.drained is None or (r.drained.done() and r.in_flight):
            r.drained = self._loop.create_future()
        log.container.info("draining replica %s of %s:%s (%d batch(es) in flight)",
                           instance_id, r.key[0], r.key[1], len(r.in_flight))
        if not r.in_flight:
            _settle(r.drained)
        return r.drained

    def replica_by_instance(self, instance_id: str) -> Replica | None:
        for mq in self.models.values():
            r = mq.replicas.get(instance_id)
            if r is not None:
                return r
        return None

    def remove_replica(self, instance_id: str, reason: str) -> bool:
        r = self.replica_by_instance(instance_id)
        if r is None:
            return False
        self._drop_replica(self.models[r.key], r, reason)
        return True

    def _drop_replica(self, mq: ModelQueue, r: Replica, reason: str, *, requeue: bool = True,
                      notify: bool = True) -> None:
        mq._remove(r)
        if self._by_identity.get(r.identity) is r:
            del self._by_identity[r.identity]
        r.sizer.available = False
        lost = []
        for batch_id, fl in list(r.in_flight.items()):
            self._batches.pop(batch_id, None)
            if fl.timer is not None:
                fl.timer.cancel()
            if fl.probe is not None:
                _resolve(fl.probe, (False, f"replica {r.instance_id} was lost: {reason}"))
            elif not fl.timed_out:
                mq.core.returned(len(fl.queries), self._clock())
            if not (fl.timed_out and requeue):  # a timeout requeued those already
                lost.extend(fl.queries)
        r.in_flight.clear()
        if r.drained is not None:
            _settle(r.drained)
        if requeue:
            self._requeue(mq, lost)
        else:
            for q in lost:
                answer(q, (False, f"replica lost: {reason}"))
        log.rpc.info("replica %s of %s removed: %s", r.instance_id, mq.label, reason)
        if notify and self.on_replica_change:
            self.on_replica_change(mq.key)
        if requeue:
            self._dispatch(mq)

    def sweep(self, now: float, silent_after: float) -> list[Replica]:
        """Remove replicas silent for ``silent_after`` s that owe no answer, or are suspect."""
        gone = []
        for mq in list(self.models.values()):
            for r in list(mq.order):
                if now - r.last_seen > silent_after and (not r.in_flight or r.suspect):
                    self._drop_replica(mq, r, f"silent for {now - r.last_seen:.1f} s")
                    gone.append(r)
        return gone

    def replicas(self) -> list[Replica]:
        return [r for mq in self.models.values() for r in mq.order]

    def fail_all(self, explanation: str) -> None:
        """Answer everything queued or in flight (shutdown)."""
        for key in list(self.models):
            self.remove_model(key, explanation)
