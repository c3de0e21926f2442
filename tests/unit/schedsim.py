"""Virtual time for the scheduler glue: an event loop stand-in, futures, and fake replicas.

The Scheduler only needs ``call_at`` (with handles that ``cancel()`` and tell ``when()``) and a
clock, so a heap of timers on a float clock drives it deterministically: no sleeps, no wall
clock, every interleaving reproducible.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from clipper_rpc import protocol as P
from clipper_core.scheduler import BatchingConfig, Scheduler

KEY = ("m", "1")


class Handle:
    __slots__ = ("_when", "_cb", "_args", "_cancelled")

    def __init__(self, when, cb, args):
        self._when = when
        self._cb = cb
        self._args = args
        self._cancelled = False

    def when(self):
        return self._when

    def cancel(self):
        self._cancelled = True

    def cancelled(self):
        return self._cancelled


class VirtualLoop:
    """``call_at``/``call_later``/``time`` on virtual time; :meth:`run_until` fires timers."""

    def __init__(self, start=1000.0):
        self.now = start
        self._timers = []
        self._seq = itertools.count()

    def time(self):
        return self.now

    def call_at(self, when, cb, *args):
        h = Handle(when, cb, args)
        heapq.heappush(self._timers, (when, next(self._seq), h))
        return h

    def call_later(self, delay, cb, *args):
        return self.call_at(self.now + delay, cb, *args)

    def next_timer(self):
        while self._timers and self._timers[0][2].cancelled():
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def run_until(self, t):
        """Fire every timer due by ``t`` in time order, then set the clock to ``t``."""
        while True:
            nxt = self.next_timer()
            if nxt is None or nxt > t:
                break
            when, _, h = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            h._cb(*h._args)
        self.now = max(self.now, t)

    def advance(self, dt):
        self.run_until(self.now + dt)


class MillisecondLoop(VirtualLoop):
    """A loop whose clock reads whole milliseconds, as uvloop's does (libuv's cached
    ``uv_now``), and whose timers are armed for a whole number of milliseconds from that
    reading, rounded: one due within half a millisecond fires at the next iteration (1 us
    later here), while the clock may still read earlier than the time it was armed for.
    ``fired`` counts the timers that fired."""

    def __init__(self, start=1000.0):
        super().__init__(start)
        self.fired = 0

    def time(self):
        return int(self.now * 1000) / 1000

    def call_at(self, when, cb, *args):
        t = self.time()
        ms = round(max(when - t, 0.0) * 1000)
        at = max(self.now + 1e-6, t + ms / 1000)

        def fire(*a):
            self.fired += 1
            cb(*a)

        h = Handle(at, fire, args)
        heapq.heappush(self._timers, (at, next(self._seq), h))
        return h


class Future:
    """The part of asyncio.Future the scheduler uses; a second result is an error."""

    def __init__(self):
        self._result = None
        self._done = False
        self.sets = 0

    def done(self):
        return self._done

    def set_result(self, value):
        self.sets += 1
        if self._done:
            raise AssertionError(f"answered twice: {self._result!r}, then {value!r}")
        self._done = True
        self._result = value

    def result(self):
        assert self._done
        return self._result


def frames_bytes(frames):
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


class Sim:
    """One model version on a Scheduler driven by virtual time, with fake replicas.

    A replica with ``latency`` (a function of the batch size) answers each batch that long
    after it arrives, one batch at a time like a real container, and reports that time as
    its compute time (``report_compute=False``: reports none, as an old container); its
    answer reaches the scheduler ``delay`` (a function of the batch size) later: the
    frontend's own lag, such as CPU contention.  With ``latency=None`` the test answers by
    hand (``pending`` holds its batches; they report 100 us of compute).
    """

    def __init__(self, impl, cfg=None, slo=0.1, capacity=20_000, loop=None):
        self.loop = loop or VirtualLoop()
        self.impl = impl
        self.sched = Scheduler(self._send, queue_capacity=capacity, clock=self.loop.time,
                               loop=self.loop, impl=impl)
        self.mq = self.sched.ensure_model(KEY, "doubles", cfg or BatchingConfig(), slo)
        self.sent = []  # (time, replica name, batch_id, [query ids])
        self.replicas = {}
        self.queries = {}
        self._ids = itertools.count(1)
        self._identities = itertools.count(1)

    # ------------------------------------------------------------ replicas
    def add_replica(self, name, latency=None, instance_id=None, delay=None,
                    report_compute=True):
        identity = b"id-%d" % next(self._identities)
        rep = {"name": name, "identity": identity, "instance_id": instance_id or name,
               "latency": latency, "pending": [], "busy_until": self.loop.now, "alive": True,
               "delay": delay, "report": report_compute, "compute_us": {}}
        self.replicas[name] = rep
        self._by_identity = {r["identity"]: r for r in self.replicas.values()}
        r = self.sched.add_replica(identity, P.Register(KEY[0], KEY[1], "doubles",
                                                        rep["instance_id"], 1, {}))
        assert r is not None
        assert r.suspect, "a replica is in rotation before it was heard from again"
        self.sched.touch(identity)  # its first heartbeat, which a container sends at once
        return rep

    def _send(self, identity, frames):
        msg = P.decode(frames_bytes(frames))
        assert isinstance(msg, P.PredictBatch)
        rep = self._by_identity[identity]
        r = self.sched._by_identity[identity]
        assert not r.suspect and not r.draining, "a batch for a suspect or draining replica"
        ids = [int(x[0]) for x in msg.inputs]
        self.sent.append((self.loop.now, rep["name"], msg.batch_id, ids))
        rep["pending"].append(msg)
        if rep["latency"] is not None and rep["alive"]:
            start = max(self.loop.now, rep["busy_until"])
            cost = rep["latency"](len(ids))
            rep["busy_until"] = start + cost
            rep["compute_us"][msg.batch_id] = int(cost * 1e6) if rep["report"] else 0
            lag = rep["delay"](len(ids)) if rep["delay"] is not None else 0.0
            self.loop.call_at(rep["busy_until"] + lag, self.reply, rep["name"])
        return True

    def reply(self, name, error=False):
        """Replica ``name`` answers its oldest pending batch (output = 2 * query id)."""
        rep = self.replicas[name]
        if not rep["alive"] or not rep["pending"]:
            return None
        msg = rep["pending"].pop(0)
        if error:
            return self.sched.on_error(rep["identity"], P.Error(msg.batch_id, "ValueError",
                                                                "boom", ""))
        outs = [2 * float(x[0]) for x in msg.inputs]
        compute_us = rep["compute_us"].pop(msg.batch_id, 100)
        return self.sched.on_result(rep["identity"], P.Result(msg.batch_id, outs, compute_us))

    def kill(self, name, reason="process exited"):
        rep = self.replicas[name]
        rep["alive"] = False
        rep["pending"].clear()
        return self.sched.remove_replica(rep["instance_id"], reason)

    def replica(self, name):
        return self.sched.replica_by_instance(self.replicas[name]["instance_id"])

    # ------------------------------------------------------------ queries
    def submit(self, slo=None, deadline_timer=True):
        """Submit one query now; with ``deadline_timer`` the frontend's rule applies too
        (whatever has no answer at its deadline gets the default then)."""
        qid = next(self._ids)
        now = self.loop.now
        slo = self.mq.slo_s if slo is None else slo
        q = self.impl.Query(qid, np.array([float(qid)]), now, now + slo, Future())
        self.queries[qid] = q
        ok = self.sched.submit(KEY, q)
        if deadline_timer:
            self.loop.call_at(q.deadline, self._deadline, q)
        return q, ok

    def _deadline(self, q):
        if not q.answered:
            q.answered = True
            q.future.set_result((False, "deadline"))

    def answers(self):
        return {qid: q.future.result() for qid, q in self.queries.items() if q.future.done()}
