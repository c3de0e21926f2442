"""Hypothesis state machine: arrivals, answers, errors, timeouts, heartbeats, replica loss and
reconnects, and batching changes in any interleaving.  No query is lost, none is answered
twice, none is sent after its deadline or to a suspect replica, and every prediction belongs to
the query it answers."""

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from clipper_core import _sched_c, _sched_py
from clipper_core.scheduler import BatchingConfig

from schedsim import Sim

NAMES = ("a", "b", "c")


class SchedulerMachine(RuleBasedStateMachine):
    impl = None

    def __init__(self):
        super().__init__()
        self.sim = Sim(self.impl, BatchingConfig(batch_size=-1, batch_wait_s=0.002,
                                                 rpc_timeout_s=0.03), slo=0.1, capacity=40)
        self.sched = self.sim.sched
        self.checked = 0  # entries of sim.sent already checked
        self.most_in_flight = self.sim.mq.cfg.max_in_flight

    # ------------------------------------------------------------ helpers
    def live(self):
        return [n for n, r in self.sim.replicas.items() if r["alive"]]

    def in_flight(self):
        """query id -> batches (not timed out) that hold it, over connected replicas."""
        held = {}
        for fl in self.sched._batches.values():
            if fl.timed_out or fl.replica.key not in self.sched.models:
                continue
            for q in fl.queries:
                held.setdefault(q.query_id, []).append(fl.batch_id)
        return held

    # ------------------------------------------------------------ rules
    @precondition(lambda self: len(self.sim.replicas) < len(NAMES))
    @rule()
    def add_replica(self):
        name = NAMES[len(self.sim.replicas)]
        self.sim.add_replica(name, latency=None)

    @rule(n=st.integers(1, 6), slo=st.sampled_from([0.02, 0.05, 0.1, 0.3]))
    def arrive(self, n, slo):
        for _ in range(n):
            q, ok = self.sim.submit(slo)
            if not ok:
                assert q.future.done() and q.future.result()[1].startswith("shed: ")

    @rule(name=st.sampled_from(NAMES), error=st.booleans())
    def answer(self, name, error):
        if name in self.sim.replicas:
            self.sim.reply(name, error=error)

    @rule(dt=st.sampled_from([0.0005, 0.002, 0.01, 0.031, 0.1]))
    def advance(self, dt):
        self.sim.loop.advance(dt)

    @rule(name=st.sampled_from(NAMES))
    def heartbeat(self, name):
        rep = self.sim.replicas.get(name)
        if rep is not None and rep["alive"]:
            self.sched.touch(rep["identity"])

    @rule(name=st.sampled_from(NAMES))
    def lose(self, name):
        rep = self.sim.replicas.get(name)
        if rep is not None and rep["alive"]:
            self.sim.kill(name)

    @rule(name=st.sampled_from(NAMES))
    def reconnect(self, name):
        """The replica's process comes back (same instance id, new socket): what it owed is
        lost and its queries must go out again."""
        rep = self.sim.replicas.get(name)
        if rep is not None:
            pending = rep["pending"]
            pending.clear()
            new = self.sim.add_replica(name, latency=None, instance_id=rep["instance_id"])
            assert new["pending"] is not pending

    @rule(size=st.sampled_from([-1, 1, 3, 8]), in_flight=st.integers(1, 2),
          wait=st.sampled_from([0.0, 0.002, None]))
    def set_batching(self, size, in_flight, wait):
        mq = self.sim.mq
        self.most_in_flight = max(self.most_in_flight, in_flight)
        self.sched.configure(mq.key, mq.cfg.replace(batch_size=size, max_in_flight=in_flight,
                                                    batch_wait_s=wait))

    @rule()
    def sweep(self):
        self.sched.sweep(self.sim.loop.now, 0.05)

    # ------------------------------------------------------------ invariants
    @invariant()
    def batches_are_sound(self):
        sim = self.sim
        for sent_at, name, batch_id, ids in sim.sent[self.checked:]:
            assert len(set(ids)) == len(ids), "a query twice in one batch (padding?)"
            for qid in ids:
                q = sim.queries[qid]
                assert q.deadline > sent_at, "sent after its deadline"
            fl = self.sched._batches.get(batch_id)
            if fl is not None:
                assert len(ids) <= max(fl.replica.sizer.cap, 1)
        self.checked = len(sim.sent)

    @invariant()
    def nothing_is_lost_or_doubled(self):
        sim = self.sim
        now = sim.loop.now
        queued = {q.query_id for q in sim.mq.queue.items() if not q.answered}
        held = self.in_flight()
        for qid, q in sim.queries.items():
            assert q.future.sets <= 1
            assert q.answered == q.future.done()
            if q.answered:
                ok, value = q.future.result()
                if ok:
                    assert value == 2.0 * qid, "a prediction for another query"
                continue
            if q.deadline > now:
                # unanswered and still in time: it must be somewhere the scheduler will find
                assert qid in queued or qid in held, f"query {qid} is lost"
            assert len(held.get(qid, [])) <= 1, "in two live batches at once"

    @invariant()
    def in_flight_count_matches_the_batches(self):
        """The core's count of queries in flight (what its dispatch decision reads) is the
        sum over the live batches of the version: every way a batch ends counts it back."""
        for mq in self.sched.models.values():
            live = sum(len(fl.queries) for r in mq.order for fl in r.in_flight.values()
                       if not fl.timed_out)
            assert mq.core.in_flight == live

    @invariant()
    def availability_mirrors_health(self):
        # (Sim refuses, at send time, any batch for a suspect or draining replica)
        for r in self.sched.replicas():
            assert r.sizer.available == (not r.suspect and not r.draining)
            live = [fl for fl in r.in_flight.values() if not fl.timed_out]
            assert len(live) <= self.most_in_flight  # (lowering the limit keeps what flies)

    def teardown(self):
        # past every deadline: the frontend's deadline rule has answered all the rest
        self.sim.loop.advance(1.0)
        for q in self.sim.queries.values():
            assert q.future.done() and q.future.sets == 1


def machine(impl):
    cls = type(f"SchedulerMachine_{impl.__name__.rsplit('.', 1)[-1]}", (SchedulerMachine,),
               {"impl": impl})
    cls.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
    return cls


TestSchedulerCompiled = machine(_sched_c).TestCase
TestSchedulerPure = machine(_sched_py).TestCase


def test_suspect_replica_gets_nothing_new():
    """The rule the machine checks loosely, pinned down: from a timeout until it answers or
    heartbeats, a replica is sent no batch."""
    for impl in (_sched_c, _sched_py):
        sim = Sim(impl, BatchingConfig(batch_size=1, batch_wait_s=0.0, rpc_timeout_s=0.01,
                                       max_in_flight=1),
                  slo=1.0)
        sim.add_replica("a", latency=None)
        sim.submit()
        sim.loop.advance(0.02)
        assert sim.replica("a").suspect
        n = len(sim.sent)
        for _ in range(5):
            sim.submit()
            sim.loop.advance(0.001)
        assert len(sim.sent) == n
        sim.sched.touch(sim.replicas["a"]["identity"])
        assert len(sim.sent) == n + 1


pytestmark = pytest.mark.filterwarnings("error")
