"""The asyncio glue of the scheduler on virtual time, with fake replicas, on both cores."""

import math

import pytest

from clipper_core.errors import ConfigError
from clipper_core.scheduler import BatchingConfig

from schedsim import Sim


def linear(a, b):
    return lambda n: a + b * n


def test_batches_hold_only_real_queries_in_deadline_order(impl):
    sim = Sim(impl, BatchingConfig(batch_size=4, batch_wait_s=0.0))
    sim.add_replica("r", latency=None)
    for slo in (0.09, 0.05, 0.07, 0.08, 0.06, 0.1):
        sim.submit(slo)
    # the first query went out alone to the idle replica; the next full batch, in deadline
    # order, went at once as its next one (max_in_flight 2); the rest waits for an answer
    assert [ids for *_, ids in sim.sent] == [[1], [2, 5, 3, 4]]
    sim.reply("r")
    assert sim.sent[-1][3] == [2, 5, 3, 4], "a partial batch waits for the replica"
    sim.reply("r")
    assert sim.sent[-1][3] == [6]
    sim.reply("r")
    assert all(ok and out == 2 * qid for qid, (ok, out) in sim.answers().items())


def test_delayed_batching_waits_for_the_batch_to_fill_up_to_its_bound(impl):
    wait = 0.004
    sim = Sim(impl, BatchingConfig(batch_size=8, batch_wait_s=wait), slo=1.0)
    sim.add_replica("r", latency=lambda n: 0.001)  # 1 ms a batch: bursts outrun it
    arrivals = {}
    t = sim.loop.now
    # bursts and gaps: some batches fill, some leave at the bound
    for gap in [0, 0.001, 0.001, 0.0005, 0.02, 0.0001] * 6 + [0.0] * 20:
        t += gap
        sim.loop.run_until(t)
        q, _ = sim.submit()
        arrivals[q.query_id] = q.arrival
    sim.loop.advance(1.0)
    assert sum(len(ids) for *_, ids in sim.sent) == len(arrivals)
    finished = []  # when the replica answered each batch (one at a time, 1 ms each)
    for sent_at, _, _, ids in sim.sent:
        # the bound runs from the oldest arrival, or from when the replica became free
        # (waiting for a busy replica is not waiting for company)
        free_at = max([f for f in finished if f <= sent_at + 1e-12], default=-math.inf)
        oldest = min(arrivals[i] for i in ids)
        assert sent_at <= max(oldest, free_at) + wait + 1e-12, "waited past the bound"
        assert len(ids) <= 8
        finished.append(max([sent_at, *finished]) + 0.001)
    sizes = [len(ids) for *_, ids in sim.sent]
    assert max(sizes) == 8 and min(sizes) < 8
    stats = sim.mq.snapshot()["stats"]
    assert stats["batch_wait_s"]["count"] == len(sim.sent)
    assert 0 < stats["batch_wait_s"]["sum"] <= wait * len(sim.sent)


def test_light_load_is_not_held_back_by_delayed_batching(impl):
    """One client that asks again only after its answer never fills a batch: waiting for one
    would add the whole wait bound to every query (the default adaptive batch size at low
    load).  After the first batches, a lone query goes at once."""
    wait = 0.002
    sim = Sim(impl, BatchingConfig(batch_wait_s=wait), slo=1.0)
    sim.add_replica("r", latency=lambda n: 0.0003)
    delays = []
    for _ in range(30):
        q, _ = sim.submit()
        sim.loop.advance(0.01)  # the answer comes back; the client asks again
        sent_at = next(t for t, _, _, ids in sim.sent if q.query_id in ids)
        delays.append(sent_at - q.arrival)
    assert sum(len(ids) for *_, ids in sim.sent) == 30
    assert all(d == 0.0 for d in delays[5:]), delays
    # a burst is still batched, and nothing waits past the bound
    before = len(sim.sent)
    burst = [sim.submit()[0] for _ in range(6)]
    sim.loop.advance(0.01)
    sent = sim.sent[before:]
    assert sum(len(ids) for *_, ids in sent) == 6 and len(sent) < 6
    assert all(t <= burst[0].arrival + wait + 0.0003 + 1e-9 for t, *_ in sent)


def test_aimd_under_saturating_load_stays_within_the_budget(impl):
    a, b, slo, step = 1e-3, 5e-5, 0.02, 4  # budget 10 ms: the largest batch in it is 180
    best = math.floor((0.5 * slo - a) / b)
    # one batch at a time: the sizer measures the round trip, which for a second batch in
    # flight includes the wait behind the first
    sim = Sim(impl, BatchingConfig(batch_wait_s=0.0, aimd_step=step, max_in_flight=1),
              slo=slo)
    sim.add_replica("r", latency=linear(a, b))
    sizer = sim.replica("r").sizer
    current = []
    # open-loop arrivals at 40k queries/s, twice what the best batch size can serve
    for _ in range(600):
        for _ in range(40):
            sim.submit()
        sim.loop.advance(0.001)
        current.append(sizer.current)
    sim.loop.advance(1.0)
    climbed = next(i for i, n in enumerate(current) if n >= best - step)
    assert climbed < 300
    steady = current[climbed:]
    assert max(steady) <= best + step and min(steady) >= int(0.9 * best)
    assert max(n for n, _ in sim.mq.recent) <= best + step
    assert all(lat <= 0.5 * slo for n, lat in sim.mq.recent if n <= best)
    # every query was answered by its deadline: by the model or, shed, at once
    answers = sim.answers()
    assert len(answers) == len(sim.queries)
    assert sum(1 for ok, _ in answers.values() if ok) > 0.3 * len(answers)
    snap = sim.mq.snapshot()
    assert snap["shed_late"] > 0 and snap["timeouts"] == 0


def test_expired_queries_get_the_default_and_never_reach_a_model(impl):
    sim = Sim(impl, BatchingConfig(batch_size=1, batch_wait_s=0.0, max_in_flight=1))
    sim.add_replica("r", latency=None)
    q1, _ = sim.submit(0.5)
    q2, _ = sim.submit(0.01, deadline_timer=False)  # nobody but the scheduler answers it
    q3, _ = sim.submit(0.5)
    sim.loop.advance(0.02)
    sim.reply("r")  # the replica frees up after q2's deadline
    assert q2.future.result() == (False, "deadline passed while queued for model m:1")
    assert [ids for *_, ids in sim.sent] == [[1], [3]]
    assert sim.mq.snapshot()["expired"] == 1


def test_rpc_timeout_makes_the_replica_suspect_and_requeues_elsewhere(impl):
    sim = Sim(impl, BatchingConfig(batch_size=2, batch_wait_s=0.0, rpc_timeout_s=0.02),
              slo=0.2)
    sim.add_replica("slow", latency=None)
    q, _ = sim.submit()
    assert sim.sent[-1][1] == "slow"
    sim.add_replica("fast", latency=lambda n: 0.001)
    sim.loop.advance(0.021)  # the RPC timeout of the first batch
    slow = sim.replica("slow")
    assert slow.suspect and slow.timeouts == 1
    assert sim.sent[-1][1:4:2] == ("fast", [q.query_id])
    sim.loop.advance(0.01)
    assert q.future.result() == (True, 2.0 * q.query_id)
    # no new batch for the suspect replica, until it heartbeats
    for _ in range(3):
        sim.submit()
        sim.loop.advance(0.01)
    assert {name for _, name, *_ in sim.sent[2:]} == {"fast"}
    sim.sched.touch(sim.replicas["slow"]["identity"])
    assert not slow.suspect and not slow.in_flight
    # its late answer is ignored: the query already has one
    assert sim.reply("slow") is False
    assert q.future.sets == 1


def test_late_answer_clears_suspect_and_is_used_when_nobody_else_answered(impl):
    sim = Sim(impl, BatchingConfig(batch_size=1, rpc_timeout_s=0.01), slo=0.5)
    sim.add_replica("r", latency=None)
    q, _ = sim.submit()
    sim.loop.advance(0.05)
    r = sim.replica("r")
    assert r.suspect and sim.mq.queue.items() == [q], "requeued: no other replica yet"
    assert sim.reply("r") is True
    assert q.future.result() == (True, 2.0 * q.query_id)
    assert not r.suspect
    # the requeued copy is dropped, not sent again
    sim.loop.advance(0.01)
    assert len(sim.sent) == 1


def test_replica_loss_requeues_to_the_survivor(impl):
    sim = Sim(impl, BatchingConfig(batch_size=4, batch_wait_s=0.0, max_in_flight=1), slo=0.1)
    sim.add_replica("a", latency=None)
    sim.add_replica("b", latency=None)
    qs = [sim.submit()[0] for _ in range(8)]
    on_a = [ids for _, name, _, ids in sim.sent if name == "a"]
    assert on_a
    sim.kill("a")
    sim.loop.advance(0.001)
    while sim.replicas["b"]["pending"]:
        sim.reply("b")
    answers = sim.answers()
    assert all(answers[q.query_id] == (True, 2.0 * q.query_id) for q in qs)
    assert sim.mq.snapshot()["requeued"] == len(on_a[0])


def test_replica_loss_past_the_deadline_answers_default_by_the_deadline(impl):
    sim = Sim(impl, BatchingConfig(batch_size=4), slo=0.05)
    sim.add_replica("a", latency=None)
    q, _ = sim.submit()
    sim.loop.advance(0.06)
    sim.kill("a")
    assert q.future.result() == (False, "deadline")


def test_admission_sheds_what_cannot_meet_its_deadline_and_serves_the_rest_in_time(impl):
    lat, slo, size, reps = 0.01, 0.1, 4, 2
    sim = Sim(impl, BatchingConfig(batch_size=size, batch_wait_s=0.0, max_in_flight=1), slo=slo)
    for name in ("a", "b"):
        sim.add_replica(name, latency=lambda n: lat)
    warm = [sim.submit()[0] for _ in range(20)]  # full batches on both measure them
    sim.loop.advance(0.5)
    assert all(q.future.result()[0] for q in warm)
    assert {name for _, name, *_ in sim.sent} == {"a", "b"}
    t0 = sim.loop.now
    burst = [sim.submit() for _ in range(200)]
    admitted = [q for q, ok in burst if ok]
    shed = [q for q, ok in burst if not ok]
    # the first two queries leave at once, one to each idle replica; after that the
    # replicas finish reps * size queries every `lat`: that many more fit in the SLO
    assert len(admitted) == reps + reps * size * (math.floor(slo / lat) - 1)
    assert all(q.future.done() and q.future.result()[1].startswith(
        "shed: deadline cannot be met") for q in shed)
    done_at = {}
    while sim.loop.next_timer() is not None:
        sim.loop.run_until(sim.loop.next_timer())
        for q in admitted:
            if q.future.done() and q.query_id not in done_at:
                done_at[q.query_id] = sim.loop.now
    for q in admitted:
        assert q.future.result() == (True, 2.0 * q.query_id)
        assert done_at[q.query_id] <= q.deadline
    # one more would have missed: the last admitted query finished at the last moment
    assert max(done_at.values()) == pytest.approx(t0 + slo)
    snap = sim.mq.snapshot()
    assert snap["shed"] == snap["shed_late"] == len(shed)


def test_full_queue_sheds_with_a_reason(impl):
    sim = Sim(impl, BatchingConfig(batch_size=1, max_in_flight=1), slo=1.0, capacity=3)
    sim.add_replica("r", latency=None)
    results = [sim.submit()[1] for _ in range(6)]
    assert results == [True] * 4 + [False] * 2  # one in flight, three queued
    q = sim.queries[6]
    assert q.future.result()[1].startswith("shed: the queue of model m:1 is full")
    assert sim.mq.snapshot()["shed_full"] == 2


def test_batching_changes_at_run_time(impl):
    sim = Sim(impl, BatchingConfig(batch_wait_s=0.0, max_in_flight=1), slo=1.0)
    sim.add_replica("r", latency=None)
    sim.submit()
    for _ in range(20):
        sim.submit()
    sim.reply("r")
    assert [len(ids) for *_, ids in sim.sent] == [1, 3]  # AIMD: 1, then one step up
    cfg = sim.mq.cfg.replace(batch_size=5, max_in_flight=2)
    sim.sched.configure(("m", "1"), cfg)
    # (a second batch goes just before the busy replica is expected to answer: here at
    # once, its measured latency being about nothing)
    sim.loop.advance(0.001)
    assert [len(ids) for *_, ids in sim.sent] == [1, 3, 5], "a second batch in flight"
    sim.reply("r")
    sim.loop.advance(0.001)
    assert [len(ids) for *_, ids in sim.sent] == [1, 3, 5, 5]
    assert len(sim.replica("r").in_flight) == 2
    assert sim.replica("r").sizer.current == 5 and sim.replica("r").sizer.fixed
    sim.sched.configure(("m", "1"), cfg.replace(batch_size=-1, aimd_cap=3))
    assert sim.replica("r").sizer.current == 3 and not sim.replica("r").sizer.fixed
    snap = sim.mq.snapshot()
    assert snap["batching"]["aimd_cap"] == 3 and snap["replicas"]["r"]["batch_size"] == 3


def test_model_errors_answer_with_an_explanation(impl):
    sim = Sim(impl, BatchingConfig(batch_size=2), slo=1.0)
    sim.add_replica("r", latency=None)
    q, _ = sim.submit()
    assert len(sim.sent) == 1, "a lone query goes at once: no other is in the system"
    sim.reply("r", error=True)
    assert q.future.result() == (False, "model m:1 raised ValueError: boom")
    assert sim.mq.snapshot()["errors"] == 1


def test_snapshot_has_what_the_metrics_layer_reads(impl):
    sim = Sim(impl, BatchingConfig(batch_wait_s=0.0), slo=0.1)
    sim.add_replica("r", latency=linear(0.001, 0.0001))
    for _ in range(50):
        sim.submit()
        sim.loop.advance(0.0002)
    sim.loop.advance(1.0)
    snap = sim.mq.snapshot(recent=True)
    for k in ("queue_depth", "queue_capacity", "admitted", "shed", "expired", "errors",
              "timeouts", "requeued", "batches", "budget_s", "batch_wait_bound_s"):
        assert isinstance(snap[k], (int, float)), k
    assert set(snap["stats"]) == {"queue_delay_s", "batch_wait_s", "rpc_s", "model_compute_s",
                                  "batch_size"}
    assert snap["stats"]["batch_size"]["sum"] == 50 == snap["admitted"]
    assert snap["stats"]["queue_delay_s"]["count"] == 50
    assert snap["stats"]["rpc_s"]["count"] == snap["batches"] == len(snap["recent_batches"])
    assert snap["replicas"]["r"]["batch_size"] >= 1
    assert snap["budget_s"] == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(batch_size=-2),
                                 dict(budget_fraction=0), dict(budget_fraction=1.5),
                                 dict(max_in_flight=0), dict(aimd_backoff=1.0),
                                 dict(aimd_step=0), dict(batch_wait_s=-1),
                                 dict(rpc_timeout_s=0), dict(batch_size=True),
                                 dict(aimd_cap="9")])
def test_batching_config_is_validated(bad):
    with pytest.raises(ConfigError) as e:
        BatchingConfig(**bad)
    assert next(iter(bad)) in str(e.value)


def test_batching_config_rejects_unknown_parameters():
    with pytest.raises(ConfigError, match="batchsize"):
        BatchingConfig().replace(batchsize=3)


def test_shutdown_answers_everything_queued_and_in_flight(impl):
    sim = Sim(impl, BatchingConfig(batch_size=2, batch_wait_s=0.0, max_in_flight=1), slo=1.0)
    sim.add_replica("r", latency=None)
    qs = [sim.submit(deadline_timer=False)[0] for _ in range(7)]
    assert len(sim.sent) == 1 and len(sim.mq.queue) == 6  # the first went out alone
    sim.sched.fail_all("Clipper is shutting down")
    for q in qs:
        assert q.future.result() == (False, "Clipper is shutting down") or \
            q.future.result()[1].startswith("replica lost")
    assert not sim.sched.models and not sim.sched._batches


def test_the_next_batch_goes_before_the_answers_are_written(impl):
    """An answer first sends the replica its next batch, then resolves the answered
    queries' futures (writing an answer out costs the event loop tens of us; the replica
    would wait for all of them), and a query it answered is not sent again even while its
    future is unresolved."""
    sim = Sim(impl, BatchingConfig(batch_size=2, batch_wait_s=0.0, max_in_flight=1))
    sim.add_replica("r", latency=None)
    first = [sim.submit()[0]]  # an idle replica takes it alone
    queued = [sim.submit()[0] for _ in range(2)]
    assert [ids for *_, ids in sim.sent] == [[q.query_id for q in first]]
    seen = []

    class Recording:
        def __init__(self):
            self.value = None

        def done(self):
            return self.value is not None

        def set_result(self, value):
            seen.append((len(sim.sent), value))
            self.value = value

    for q in first:
        q.future = Recording()
    assert sim.reply("r") is True
    assert sim.sent[-1][3] == [q.query_id for q in queued]
    assert seen == [(2, (True, 2.0 * q.query_id)) for q in first], \
        "the answers were written after the next batch went"


@pytest.mark.parametrize("batch_size,report,deepest", [
    (1, True, 8),     # a fixed size, the transfer measured: up to max_in_flight
    (-1, True, 2),    # adaptive: the batches grow instead
    (1, False, 2),    # no compute reported, so no transfer time: one waiting at most
])
def test_short_batches_of_a_fixed_size_travel_several_at_a_time(impl, batch_size, report,
                                                                 deepest):
    """A replica whose batches take 50 us, behind a 300 us transfer: with a fixed batch
    size it holds as many as its measured transfer time (and the timer slack) can cover,
    up to max_in_flight (8 by default), so that each side's threads wake once for several."""
    sim = Sim(impl, BatchingConfig(batch_size=batch_size, batch_wait_s=0.0), slo=1.0)
    sim.add_replica("r", latency=lambda n: 5e-5, delay=lambda n: 3e-4, report_compute=report)
    for _ in range(20):  # bursts: the transfer time and the batches' cost back to back
        for _ in range(10):
            sim.submit()
        sim.loop.advance(0.005)
    most = 0
    for _ in range(40):
        sim.submit()
        most = max(most, len(sim.replica("r").in_flight))
    assert most == deepest
    sim.loop.advance(0.05)
    assert len(sim.answers()) == 240 and all(ok for ok, _ in sim.answers().values())
