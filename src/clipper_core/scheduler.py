"""The batching scheduler: asyncio glue around the compiled core in ``sched``.

One :class:`ModelQueue` per (model, version) holds a deadline-ordered queue and the replicas
serving that version.  A free replica pulls a batch whose size its :class:`BatchSizer` sets;
the answer resolves each query's future with ``(True, output)``, and anything that prevents an
answer resolves it with ``(False, explanation)`` so that the frontend substitutes the app's
default output.  The scheduler never waits on the network: sending is a non-blocking call of
the RPC transport and answers arrive through :meth:`Scheduler.on_result`.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any, Callable

from clipper_rpc import protocol as P

from . import log
from .sched import BatchSizer, DeadlineQueue, Query

ModelKey = tuple  # (model name, version)

#: what a query's future resolves to
Answer = tuple  # (True, output) | (False, explanation)


@dataclass
class BatchingConfig:
    """Per-model batching parameters; changeable at run time."""

    #: -1 = adaptive (AIMD), N = fixed maximum batch size
    batch_size: int = -1
    #: share of the SLO one batch may take (queueing and transfer need the rest)
    budget_fraction: float = 0.5
    #: delayed batching: wait at most this long (from the oldest query's arrival) for a batch
    #: to fill; None = derived from the SLO (5% of it, at most 2 ms)
    batch_wait_s: float | None = None
    max_in_flight: int = 1
    aimd_step: int = 2
    aimd_backoff: float = 0.9
    aimd_cap: int = 1024
    aimd_initial: int = 1


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
    """One container replica of a model version, as the frontend sees it."""

    __slots__ = ("identity", "instance_id", "key", "pid", "info", "in_flight", "last_seen",
                 "suspect", "sizer", "registered_at", "batches", "errors", "latency_ewma")

    def __init__(self, identity: bytes, instance_id: str, key: ModelKey, pid: int, info: dict,
                 sizer: BatchSizer, now: float) -> None:
        self.identity = identity
        self.instance_id = instance_id
        self.key = key
        self.pid = pid
        self.info = info
        self.in_flight: dict[int, InFlight] = {}
        self.last_seen = now
        self.suspect = False
        self.sizer = sizer
        self.registered_at = now
        self.batches = 0
        self.errors = 0
        self.latency_ewma = 0.0

    def to_json(self) -> dict:
        return {"instance_id": self.instance_id, "model_name": self.key[0],
                "model_version": self.key[1], "pid": self.pid, "suspect": self.suspect,
                "in_flight": len(self.in_flight), "batch_size": self.sizer.current,
                "batches": self.batches, "errors": self.errors, "info": self.info}


class InFlight:
    __slots__ = ("batch_id", "replica", "queries", "sent_at", "timer", "timed_out")

    def __init__(self, batch_id: int, replica: Replica, queries: list, sent_at: float) -> None:
        self.batch_id = batch_id
        self.replica = replica
        self.queries = queries
        self.sent_at = sent_at
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out = False


class ModelQueue:
    """Queue and replicas of one model version."""

    def __init__(self, key: ModelKey, input_type: str, capacity: int, cfg: BatchingConfig,
                 slo_s: float) -> None:
        self.key = key
        self.label = f"{key[0]}:{key[1]}"
        self.input_type = input_type
        self.queue = DeadlineQueue(capacity)
        self.cfg = cfg
        self.slo_s = slo_s
        self.replicas: dict[str, Replica] = {}
        self.wait_timer: asyncio.TimerHandle | None = None
        #: when delayed batching began holding a partial batch (-1: not holding one)
        self.wait_since = -1.0
        self.rr = 0
        # counters for the metrics layer
        self.shed = 0
        self.expired = 0
        self.errors = 0
        self.queries = 0
        self.stats = {k: StatPair() for k in (
            "queue_delay_s", "batch_wait_s", "rpc_s", "model_compute_s", "batch_size")}

    @property
    def budget_s(self) -> float:
        return max(1e-3, self.slo_s * self.cfg.budget_fraction)

    @property
    def batch_wait_s(self) -> float:
        if self.cfg.batch_wait_s is not None:
            return self.cfg.batch_wait_s
        return min(0.002, 0.05 * self.slo_s)

    def new_sizer(self) -> BatchSizer:
        c = self.cfg
        return BatchSizer(c.batch_size, c.aimd_initial, c.aimd_step, c.aimd_backoff,
                          self.budget_s, c.aimd_cap)

    def healthy_replicas(self) -> int:
        return sum(1 for r in self.replicas.values() if not r.suspect)


def answer(q: Query, value: Answer) -> None:
    """Resolve ``q`` once; later answers (a straggler's, a timer's) are ignored."""
    if q.answered:
        return
    q.answered = True
    fut = q.future
    if not fut.done():
        fut.set_result(value)


class Scheduler:
    """All model queues, the replicas that serve them and the batches in flight."""

    def __init__(self, send: Callable[[bytes, list], bool], *, queue_capacity: int = 20_000,
                 clock: Callable[[], float] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._send = send
        self._loop = loop or asyncio.get_event_loop()
        self._clock = clock or self._loop.time
        self.queue_capacity = queue_capacity
        self.models: dict[ModelKey, ModelQueue] = {}
        self._by_identity: dict[bytes, Replica] = {}
        self._batches: dict[int, InFlight] = {}
        self._batch_ids = itertools.count(1)
        self.on_batch_done: Callable[[ModelQueue, int, float, float], None] | None = None
        self.on_replica_change: Callable[[ModelKey], None] | None = None

    # ---------------------------------------------------------------- models
    def ensure_model(self, key: ModelKey, input_type: str, cfg: BatchingConfig,
                     slo_s: float) -> ModelQueue:
        mq = self.models.get(key)
        if mq is None:
            mq = self.models[key] = ModelQueue(key, input_type, self.queue_capacity, cfg, slo_s)
        else:
            self.configure(key, cfg, slo_s)
        return mq

    def configure(self, key: ModelKey, cfg: BatchingConfig | None = None,
                  slo_s: float | None = None) -> None:
        """Change batching parameters at run time; replicas get fresh sizers if needed."""
        mq = self.models[key]
        resize = False
        if cfg is not None and cfg != mq.cfg:
            mq.cfg = cfg
            resize = True
        if slo_s is not None and slo_s != mq.slo_s:
            mq.slo_s = slo_s
            for r in mq.replicas.values():
                r.sizer.budget = mq.budget_s
        if resize:
            for r in mq.replicas.values():
                r.sizer = mq.new_sizer()
        self._dispatch(mq)

    def remove_model(self, key: ModelKey, explanation: str = "model version removed") -> None:
        mq = self.models.pop(key, None)
        if mq is None:
            return
        for r in list(mq.replicas.values()):
            self._drop_replica(mq, r, explanation, requeue=False)
        expired: list = []
        for q in mq.queue.pop_batch(float("inf"), len(mq.queue), expired):
            answer(q, (False, explanation))
        if mq.wait_timer:
            mq.wait_timer.cancel()

    # ---------------------------------------------------------------- queries
    def submit(self, key: ModelKey, q: Query) -> bool:
        """Queue ``q`` for model version ``key``.  False when it cannot be queued (unknown
        version or queue full); the caller answers it."""
        mq = self.models.get(key)
        if mq is None:
            return False
        now = self._clock()
        queue = mq.queue
        if len(queue) >= queue.capacity:
            expired: list = []
            queue.drop_expired(now, expired)
            self._expire(mq, expired)
        if not queue.push(q):
            mq.shed += 1
            return False
        mq.queries += 1
        self._dispatch(mq)
        return True

    def _expire(self, mq: ModelQueue, expired: list) -> None:
        if expired:
            mq.expired += len(expired)
            for q in expired:
                answer(q, (False, "deadline passed while queued"))

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self, mq: ModelQueue) -> None:
        queue = mq.queue
        if not len(queue) or not mq.replicas:
            return
        now = self._clock()
        replicas = list(mq.replicas.values())
        n = len(replicas)
        for i in range(n):
            if not len(queue):
                break
            r = replicas[(mq.rr + i) % n]
            if r.suspect:
                continue
            while len(r.in_flight) < mq.cfg.max_in_flight and len(queue):
                size = r.sizer.current
                wait = mq.batch_wait_s
                if wait > 0 and len(queue) < size:
                    head = queue.live_head(now)
                    if head is None:
                        return
                    fill_by = head.arrival + wait
                    if now < fill_by and len(queue) < size:
                        if mq.wait_since < 0:
                            mq.wait_since = now
                        self._arm_wait(mq, fill_by)
                        return
                expired: list = []
                batch = queue.pop_batch(now, size, expired)
                self._expire(mq, expired)
                if not batch:
                    break
                self._send_batch(mq, r, batch, now)
        mq.rr = (mq.rr + 1) % n

    def _arm_wait(self, mq: ModelQueue, when: float) -> None:
        if mq.wait_timer is not None:
            if mq.wait_timer.when() <= when:
                return
            mq.wait_timer.cancel()
        mq.wait_timer = self._loop.call_at(when, self._wait_done, mq)

    def _wait_done(self, mq: ModelQueue) -> None:
        mq.wait_timer = None
        if self.models.get(mq.key) is mq:
            # the wait is over: dispatch whatever is there, full or not
            saved = mq.cfg.batch_wait_s
            mq.cfg.batch_wait_s = 0.0
            try:
                self._dispatch(mq)
            finally:
                mq.cfg.batch_wait_s = saved
                mq.wait_since = -1.0  # nothing left to send: the wait ends with no batch

    def _send_batch(self, mq: ModelQueue, r: Replica, batch: list, now: float) -> None:
        batch_id = next(self._batch_ids)
        inputs = [q.input for q in batch]
        try:
            frames = P.encode(P.PredictBatch(batch_id, mq.input_type, inputs))
        except Exception as e:  # an input the codec cannot carry: answer, don't crash
            log.batching.error("cannot encode a batch for %s: %s", mq.label, e)
            for q in batch:
                answer(q, (False, f"input could not be sent to the model: {e}"))
            return
        fl = InFlight(batch_id, r, batch, now)
        latest = 0.0
        arrivals = 0.0
        for q in batch:
            q.dispatches += 1
            arrivals += q.arrival
            if q.deadline > latest:
                latest = q.deadline
        mq.stats["queue_delay_s"].add(now * len(batch) - arrivals, len(batch))
        # batch wait: how long delayed batching held this batch back (0 when it did not)
        waited = 0.0
        if mq.wait_since >= 0:
            waited = now - mq.wait_since
            mq.wait_since = -1.0
        mq.stats["batch_wait_s"].add(waited)
        if not self._send(r.identity, frames):
            log.batching.warning("replica %s of %s unreachable; removing it", r.instance_id,
                                 mq.label)
            for q in batch:
                mq.queue.requeue(q)
            self._drop_replica(mq, r, "replica unreachable")
            return
        r.in_flight[batch_id] = fl
        self._batches[batch_id] = fl
        # RPC timeout: generous against this replica's usual latency, never past the last
        # deadline in the batch (by then every query in it has its default output)
        timeout = latest - now
        if r.latency_ewma > 0:
            timeout = min(timeout, max(0.05, 4 * r.latency_ewma))
        fl.timer = self._loop.call_at(now + max(timeout, 0.001), self._on_timeout, batch_id)

    # ---------------------------------------------------------------- answers
    def _finish(self, identity: bytes, batch_id: int) -> tuple[InFlight, Replica] | None:
        fl = self._batches.pop(batch_id, None)
        r = self._by_identity.get(identity)
        if fl is None or r is None or fl.replica is not r:
            if fl is not None:  # not this peer's batch: put it back
                self._batches[batch_id] = fl
            return None
        r.in_flight.pop(batch_id, None)
        if fl.timer is not None:
            fl.timer.cancel()
        r.last_seen = self._clock()
        if r.suspect:
            log.batching.info("replica %s answered again; no longer suspect", r.instance_id)
            r.suspect = False
        return fl, r

    def on_result(self, identity: bytes, msg: P.Result) -> bool:
        done = self._finish(identity, msg.batch_id)
        if done is None:
            return False
        fl, r = done
        mq = self.models.get(r.key)
        if len(msg.outputs) != len(fl.queries):
            return self.on_error(identity, P.Error(msg.batch_id, "ProtocolError",
                                                   "wrong number of outputs"), done)
        for q, out in zip(fl.queries, msg.outputs):
            answer(q, (True, out))
        now = self._clock()
        latency = now - fl.sent_at
        r.batches += 1
        r.latency_ewma = latency if r.latency_ewma == 0 else 0.8 * r.latency_ewma + 0.2 * latency
        r.sizer.observe(len(fl.queries), latency)
        if mq is not None:
            n = len(fl.queries)
            st = mq.stats
            st["rpc_s"].add(latency)
            st["batch_size"].add(n)
            compute = msg.compute_us / 1e6
            st["model_compute_s"].add(compute)
            if self.on_batch_done is not None:
                self.on_batch_done(mq, n, latency, compute)
            self._dispatch(mq)
        return True

    def on_error(self, identity: bytes, msg: P.Error, done: Any = None) -> bool:
        done = done or self._finish(identity, msg.batch_id)
        if done is None:
            return False
        fl, r = done
        r.errors += 1
        mq = self.models.get(r.key)
        label = mq.label if mq else f"{r.key[0]}:{r.key[1]}"
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
        mq = self.models.get(r.key)
        if not r.suspect:
            log.batching.warning("replica %s missed the RPC timeout of batch %d; suspect",
                                 r.instance_id, batch_id)
        r.suspect = True
        if mq is None:
            return
        # an overrun teaches AIMD even before the answer arrives
        r.sizer.observe(len(fl.queries), mq.budget_s * 2)
        now = self._clock()
        for q in fl.queries:
            if not q.answered and q.deadline > now:
                mq.queue.requeue(q)
        self._dispatch(mq)

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
        r = Replica(identity, reg.instance_id, key, reg.pid, reg.info, mq.new_sizer(), now)
        stale = self._by_identity.get(identity)
        if stale is not None and stale is not old:
            smq = self.models.get(stale.key)
            if smq is not None:
                self._drop_replica(smq, stale, "identity reused", notify=False)
        mq.replicas[reg.instance_id] = r
        self._by_identity[identity] = r
        log.rpc.info("replica %s of %s registered (pid %d)", reg.instance_id, mq.label, reg.pid)
        if self.on_replica_change:
            self.on_replica_change(key)
        self._dispatch(mq)
        return r

    def touch(self, identity: bytes) -> bool:
        r = self._by_identity.get(identity)
        if r is None:
            return False
        r.last_seen = self._clock()
        if r.suspect and not r.in_flight:
            r.suspect = False
            mq = self.models.get(r.key)
            if mq is not None:
                self._dispatch(mq)
        return True

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
        if mq.replicas.get(r.instance_id) is r:
            del mq.replicas[r.instance_id]
        if self._by_identity.get(r.identity) is r:
            del self._by_identity[r.identity]
        now = self._clock()
        for batch_id, fl in list(r.in_flight.items()):
            self._batches.pop(batch_id, None)
            if fl.timer is not None:
                fl.timer.cancel()
            for q in fl.queries:
                if q.answered:
                    continue
                if requeue and q.deadline > now:
                    mq.queue.requeue(q)
                elif not requeue:
                    answer(q, (False, f"replica lost: {reason}"))
        r.in_flight.clear()
        log.rpc.info("replica %s of %s removed: %s", r.instance_id, mq.label, reason)
        if notify and self.on_replica_change:
            self.on_replica_change(mq.key)
        if requeue:
            self._dispatch(mq)

    def sweep(self, now: float, silent_after: float) -> list[Replica]:
        """Remove replicas silent for ``silent_after`` s that owe no answer, or are suspect."""
        gone = []
        for mq in list(self.models.values()):
            for r in list(mq.replicas.values()):
                if now - r.last_seen > silent_after and (not r.in_flight or r.suspect):
                    self._drop_replica(mq, r, f"silent for {now - r.last_seen:.1f} s")
                    gone.append(r)
        return gone

    def replicas(self) -> list[Replica]:
        return [r for mq in self.models.values() for r in mq.replicas.values()]

    def fail_all(self, explanation: str) -> None:
        """Answer everything queued or in flight (shutdown)."""
        for key in list(self.models):
            self.remove_model(key, explanation)
