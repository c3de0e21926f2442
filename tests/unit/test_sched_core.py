"""The sans-IO scheduler core with an injected clock, on the compiled and the pure twin."""

import math

import pytest
from hypothesis import given, settings, strategies as st


def query(impl, qid, arrival, deadline):
    return impl.Query(qid, None, arrival, deadline, None)


def sizer(impl, fixed=-1, step=2, backoff=0.9, budget=0.05, cap=1024, initial=1):
    return impl.BatchSizer(fixed, initial, step, backoff, budget, cap)


# --------------------------------------------------------------------------- AIMD

@pytest.mark.parametrize("a,b,budget,step", [
    (1e-3, 5e-5, 0.02, 2),      # the benchmark's model: 1 ms + 0.05 ms per item
    (5e-3, 1e-3, 0.05, 1),
    (2e-3, 2e-4, 0.1, 4),
])
def test_aimd_climbs_to_and_stays_around_the_largest_size_in_budget(impl, a, b, budget, step):
    best = math.floor((budget - a) / b)  # largest n with a + b*n <= budget
    s = sizer(impl, step=step, budget=budget)
    sizes = []
    for _ in range(3000):
        n = s.current  # a saturated queue: every batch is full
        s.observe(n, a + b * n, budget)
        sizes.append(n)
    climb = next(i for i, n in enumerate(sizes) if n >= best - step + 1)
    assert climb <= best // step + 1, "additive increase climbs by one step per full batch"
    steady = sizes[climb:]
    assert max(steady) <= best + step, "one step past the budget at most, then back off"
    assert min(steady) >= int(0.9 * best), "never backs off below 0.9 of the best size"
    assert sum(steady) / len(steady) >= 0.93 * best
    assert s.increases > 0 and s.decreases > 0


def test_aimd_through_the_batcher_uses_the_queued_queries_slo(impl):
    # 1 ms + 0.05 ms per item; SLO 40 ms and fraction 0.5 give a 20 ms budget: best n = 380
    a, b, slo = 1e-3, 5e-5, 0.04
    batcher = impl.Batcher(100_000, 0.0, 0.5)
    s = sizer(impl, budget=1.0)  # a wrong initial budget: the batches' own SLO must win
    now, qid = 0.0, 0
    sizes = []
    for _ in range(1500):
        while len(batcher.queue) < 2000:  # keep it saturated
            qid += 1
            assert batcher.admit(query(impl, qid, now, now + slo), now, [], []) == impl.ADMIT
        batch = batcher.take(now, s, [])
        assert batcher.last_budget == pytest.approx(0.5 * slo)
        lat = a + b * len(batch)
        s.observe(len(batch), lat, batcher.last_budget)
        sizes.append(len(batch))
        now += 1e-6  # queries stay fresh; time only orders events here
    steady = sizes[500:]
    assert max(steady) <= 380 + 2 and min(steady) >= int(0.9 * 380)


def test_overrun_backs_off_by_a_tenth(impl):
    s = sizer(impl, initial=100, budget=0.05)
    assert s.current == 100
    s.observe(100, 0.051, 0.05)
    assert s.current == 90 and s.decreases == 1
    s.observe(10, 0.2, 0.05)  # an overrun of a small batch backs off all the same
    assert s.current == 81
    s.overrun()  # an RPC timeout
    assert s.current == 72
    for _ in range(100):
        s.overrun()
    assert s.current == 1, "never below one"


def test_partial_batches_do_not_grow_the_size(impl):
    s = sizer(impl, initial=10, step=3)
    s.observe(9, 0.001, 0.05)
    assert s.current == 10, "a batch that was not full says nothing about a larger size"
    s.observe(10, 0.001, 0.05)
    assert s.current == 13


def test_aimd_respects_its_cap(impl):
    s = sizer(impl, cap=7, step=4)
    for _ in range(10):
        s.observe(s.current, 0.0001, 0.05)
    assert s.current == 7


@settings(max_examples=200, deadline=None)
@given(fixed=st.integers(1, 64), ops=st.lists(
    st.tuples(st.integers(1, 200), st.floats(0.0, 0.2), st.booleans()), max_size=60),
       queued=st.integers(0, 300))
def test_fixed_batch_size_is_never_exceeded(impl, fixed, ops, queued):
    s = sizer(impl, fixed=fixed, budget=0.05)
    batcher = impl.Batcher(10_000, 0.0, 0.5)
    for i in range(queued):
        batcher.admit(query(impl, i, 0.0, 1.0), 0.0, [], [])
    for n, lat, timeout in ops:
        if timeout:
            s.overrun()
        else:
            s.observe(n, lat, 0.05)
        assert s.current == fixed
        batch = batcher.take(0.5, s, [])
        assert len(batch) <= fixed
    # switching to adaptive keeps the size, switching back to fixed applies at once
    s.reconfigure(-1, 2, 0.9, 1024)
    assert s.current == fixed and not s.fixed
    s.observe(fixed, 0.0, 0.05)
    s.reconfigure(max(1, fixed // 2), 2, 0.9, 1024)
    assert s.current == max(1, fixed // 2)


def test_sizer_rejects_bad_parameters(impl):
    for args in [(0, 1, 2, 0.9, 0.05, 10), (-1, 1, 0, 0.9, 0.05, 10),
                 (-1, 1, 2, 1.0, 0.05, 10), (-1, 1, 2, 0.9, 0.0, 10), (-1, 1, 2, 0.9, 0.05, 0)]:
        with pytest.raises(ValueError):
            impl.BatchSizer(*args)


# --------------------------------------------------------------------------- queue

@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=80),
       st.integers(1, 16))
def test_deadline_order_holds(impl, deadlines, size):
    q = impl.DeadlineQueue(1000)
    for i, d in enumerate(deadlines):
        assert q.push(query(impl, i, 0.0, d))
    out = []
    while len(q):
        batch = q.pop_batch(-1.0, size, [])
        assert 0 < len(batch) <= size
        out.extend(batch)
    assert [x.query_id for x in out] == sorted(range(len(deadlines)),
                                               key=lambda i: (deadlines[i], i))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 10.0), st.booleans()), max_size=80),
       st.floats(0.0, 10.0), st.integers(1, 100))
def test_expired_queries_are_never_dispatched(impl, entries, now, size):
    q = impl.DeadlineQueue(1000)
    for i, (d, answered) in enumerate(entries):
        x = query(impl, i, 0.0, d)
        x.answered = answered
        q.push(x)
    expired, sent = [], []
    while len(q):
        sent.extend(q.pop_batch(now, size, expired))
    assert all(x.deadline > now and not x.answered for x in sent)
    assert all(x.deadline <= now and not x.answered for x in expired)
    assert {x.query_id for x in sent} | {x.query_id for x in expired} == {
        i for i, (_, answered) in enumerate(entries) if not answered}
    assert q.expired == sum(1 for d, _ in entries if d <= now)


def test_queue_is_bounded(impl):
    q = impl.DeadlineQueue(3)
    assert all(q.push(query(impl, i, 0.0, 1.0)) for i in range(3))
    assert not q.push(query(impl, 9, 0.0, 1.0)) and len(q) == 3
    q.requeue(query(impl, 10, 0.0, 0.5))  # a requeue was admitted once: it may exceed
    assert len(q) == 4 and q.pop_batch(0.0, 1, [])[0].query_id == 10
    with pytest.raises(ValueError):
        impl.DeadlineQueue(0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), max_size=60), st.floats(0.0, 10.0),
       st.integers(0, 70), st.integers(0, 30))
def test_count_ahead_counts_earlier_deadlines(impl, deadlines, d, limit, popped):
    q = impl.DeadlineQueue(1000)
    for i, x in enumerate(deadlines):
        q.push(query(impl, i, 0.0, x))
    left = sorted(deadlines)[popped:]
    q.pop_batch(-1.0, popped, []) if popped else None
    true = sum(1 for x in left if x <= d)
    got = q.count_ahead(d, limit)
    if true < limit:
        assert got == true
    else:
        assert got >= limit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.001, 1.0)), min_size=1,
                max_size=40), st.integers(0, 40))
def test_oldest_arrival_tracks_the_live_queries(impl, arrivals, popped):
    q = impl.DeadlineQueue(1000)
    for i, (a, slo) in enumerate(arrivals):
        q.push(query(impl, i, a, a + slo))
    left = q.items()
    # the queue's order: by deadline, then the order pushed (equal deadlines: a + slo
    # rounds, 1e-163 + 1.0 == 0.0 + 1.0)
    left.sort(key=lambda x: (x.deadline, x.query_id))
    q.pop_batch(-1.0, popped, []) if popped else None
    rest = [x.arrival for x in left[popped:]]
    assert q.oldest_arrival() == (min(rest) if rest else math.inf)


# --------------------------------------------------------------------------- delayed batching

@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["admit", "take", "return"]),
                              st.floats(0.0, 0.003), st.integers(1, 20)),
                    min_size=1, max_size=60),
       wait=st.floats(0.0, 0.01), size=st.integers(1, 40))
def test_delayed_batching_never_waits_past_its_bound(impl, ops, wait, size):
    """Whatever came and went before: a batch goes at once when it is full, when no wait is
    configured, or when every query that can be queued is (nothing else can come); otherwise
    it waits until exactly the oldest arrival plus the bound, never later; a busy replica
    gets only a full batch."""
    b = impl.Batcher(1000, wait, 0.5)
    s = sizer(impl, fixed=size)
    now = 0.0
    qid = 0
    taken = []
    for op, gap, k in ops:
        now += gap
        if op == "admit":
            for _ in range(k):
                qid += 1
                b.admit(query(impl, qid, now, now + 1.0), now, [], [])
        elif op == "take":
            batch = b.take(now, s, [])
            taken += batch
        elif taken:
            k = min(k, len(taken))
            del taken[:k]
            b.returned(k, now)
        assert b.in_flight == len(taken)
        n = len(b.queue)
        when = b.dispatch_at(now, size)
        bound = b.queue.oldest_arrival() + wait
        assert when == now or (when == bound and bound > now)
        if n >= size or wait == 0.0 or n >= b.population() - b.in_flight:
            assert when == now
        busy = b.dispatch_at(now, size, True)
        assert busy == (now if n >= size or n == 0 else math.inf)


def test_closed_loop_never_waits_for_queries_that_cannot_come(impl):
    """16 users, each waiting for its answer: once the 16 are queued, the batch goes."""
    b = impl.Batcher(1000, 0.002, 0.5)
    s = sizer(impl, fixed=64)
    now = 0.0
    for round_ in range(5):
        t0 = now
        for i in range(16):
            b.admit(query(impl, i, now, now + 1.0), now, [], [])
            when = b.dispatch_at(now, 64)
            if round_ and i < 15:
                assert when == t0 + 0.002, "more of the 16 will come: wait"
            now += 1e-5
        assert b.dispatch_at(now, 64) == now, "all 16 are here: nothing more can come"
        assert len(b.take(now, s, [])) == 16
        now += 0.0003
        b.returned(16, now)


def test_empty_queue_never_waits(impl):
    b = impl.Batcher(10, 0.002, 0.5)
    assert b.dispatch_at(5.0, 10) == 5.0


# --------------------------------------------------------------------------- admission

def measured(impl, current, latency, busy_until=0.0, available=True):
    s = sizer(impl, fixed=current, budget=1.0)
    s.observe(current, latency, 1.0)
    s.busy_until = busy_until
    s.available = available
    return s


@settings(max_examples=300, deadline=None)
@given(reps=st.lists(st.tuples(st.integers(1, 16), st.floats(0.001, 0.05),
                               st.one_of(st.just(0.0), st.floats(0.0, 0.1)), st.booleans()),
                     min_size=1, max_size=4),
       queued=st.lists(st.floats(0.0, 0.5), max_size=120), slo=st.floats(0.001, 0.5))
def test_admission_rejects_exactly_the_queries_that_cannot_meet_their_deadline(
        impl, reps, queued, slo):
    now = 10.0
    sizers = [measured(impl, n, lat, now + busy, ok) for n, lat, busy, ok in reps]
    b = impl.Batcher(10_000, 0.0, 0.5)
    for i, s in enumerate(queued):
        b.queue.push(query(impl, i, now, now + s))
    q = query(impl, 999, now, now + slo)
    ahead = sum(1 for s in queued if s <= slo)
    # what the replicas can finish by the deadline: each does whole batches of its size
    cap = sum(n * math.floor((q.deadline - (now + busy)) / lat) for n, lat, busy, ok in reps
              if ok and q.deadline > now + busy)
    # or: an idle replica takes the whole queue and this query in its next batch, in time
    fits = any(ok and now + busy <= now and n >= len(queued) + 1 and now + lat <= q.deadline
               for n, lat, busy, ok in reps)
    verdict = b.admit(q, now, sizers, [])
    if not any(ok for *_, ok in reps):
        assert verdict == impl.ADMIT, "no replica to judge by: queue it"
    elif ahead + 1 <= cap or fits:
        assert verdict == impl.ADMIT
    else:
        assert verdict == impl.LATE
        assert b.last_ahead >= min(ahead, b.last_capacity) and b.shed_late == 1


def test_admission_without_a_measurement_admits(impl):
    b = impl.Batcher(10, 0.0, 0.5)
    fresh = sizer(impl, budget=0.05)
    for i in range(10):
        assert b.admit(query(impl, i, 0.0, 0.001), 0.0, [fresh], []) == impl.ADMIT
    assert b.admit(query(impl, 10, 0.0, 1.0), 0.0, [fresh], []) == impl.FULL
    assert b.shed_full == 1 and b.admitted == 10


def test_full_queue_drops_expired_before_refusing(impl):
    b = impl.Batcher(2, 0.0, 0.5)
    for i in range(2):
        b.admit(query(impl, i, 0.0, 0.01), 0.0, [], [])
    expired = []
    assert b.admit(query(impl, 5, 0.02, 1.0), 0.02, [], expired) == impl.ADMIT
    assert [x.query_id for x in expired] == [0, 1]
    assert b.queue.expired == 2


def test_take_sets_the_batch_budget_from_the_tightest_slo(impl):
    b = impl.Batcher(100, 0.0, 0.4)
    b.admit(query(impl, 1, 0.0, 0.1), 0.0, [], [])
    b.admit(query(impl, 2, 0.01, 0.06), 0.01, [], [])  # a 50 ms per-request timeout
    batch = b.take(0.02, sizer(impl, fixed=10), [])
    assert [x.query_id for x in batch] == [2, 1]
    assert b.last_budget == pytest.approx(0.4 * 0.05)
    assert b.last_latest == pytest.approx(0.1)
    assert b.last_arrivals == pytest.approx(0.01)
    assert all(x.dispatches == 1 for x in batch)


def test_take_sheds_queries_the_batch_cannot_answer_in_time(impl):
    b = impl.Batcher(100, 0.0, 0.5)
    s = measured(impl, 4, 0.01, busy_until=1.0)  # 10 ms per batch of 4
    for i, slack in enumerate([0.005, 0.009, 0.011, 0.05, 0.06]):
        b.queue.push(query(impl, i, 0.9, 1.0 + slack))
    expired = []
    batch = b.take(1.0, s, expired)
    assert [q.query_id for q in expired] == [0, 1], "due before the batch comes back"
    assert [q.query_id for q in batch] == [2, 3, 4]
    assert b.queue.late == 2 and b.queue.expired == 0
    assert b.last_horizon == pytest.approx(1.0 + s.expected(4))


def test_take_reckons_with_the_smaller_batch_left_after_late_queries(impl):
    """A late query leaves the batch smaller, which comes back sooner: the next query is
    judged by that return, not by the full batch's (which would drop it too)."""
    b = impl.Batcher(100, 0.0, 0.5)
    s = sizer(impl, fixed=10, budget=1.0)
    s.observe(2, 0.006, 1.0)
    s.observe(10, 0.010, 1.0)  # 5 ms + 0.5 ms per query
    s.busy_until = 1.0
    for i, slack in enumerate([0.0096, 0.0097, 0.0098, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02,
                               0.02]):
        b.queue.push(query(impl, i, 0.99, 1.0 + slack))
    expired = []
    batch = b.take(1.0, s, expired)
    assert b.last_horizon == pytest.approx(1.010)  # a batch of 10
    # without query 0, a batch of 9 is back at 1.0095: query 1 (due at 1.0097) makes it
    assert [q.query_id for q in expired] == [0]
    assert [q.query_id for q in batch] == list(range(1, 10))
    assert b.queue.late == 1


@settings(max_examples=300, deadline=None)
@given(slacks=st.lists(st.floats(0.0, 0.03), max_size=60), size=st.integers(1, 40),
       a=st.floats(0.0, 0.01), per=st.floats(0.0, 0.001))
def test_every_query_taken_makes_it_back_in_time(impl, slacks, size, a, per):
    """Whatever the deadlines: each query of a batch is due after the batch comes back
    (at the expected latency of the batch that went), the late ones are the others, and
    the batch is in deadline order."""
    b = impl.Batcher(1000, 0.0, 0.5)
    s = sizer(impl, budget=1.0)
    s.observe(1, a + per, 1.0)
    s.observe(41, a + 41 * per, 1.0)
    for i, slack in enumerate(slacks):
        b.queue.push(query(impl, i, 0.0, 1.0 + slack))
    expired = []
    batch = b.take(1.0, s, expired)
    back = 1.0 + s.expected(len(batch))
    assert all(q.deadline > back - 1e-9 for q in batch)
    assert len(batch) + len(expired) == min(len(slacks), len(batch) + len(expired))
    assert [q.deadline for q in batch] == sorted(q.deadline for q in batch)
    assert len(batch) <= size or len(batch) <= s.current
    assert all(q.deadline <= 1.0 + s.expected(min(len(slacks), s.current)) + 1e-9
               for q in expired)


def test_an_open_loop_batch_goes_once_waiting_costs_more_than_it_fills(impl):
    """Queries that come on their own at 1 per ms, 10 at most in the system, and 8 queued
    for a free replica.  Delayed batching would wait for the 2 that come within its 2 ms
    bound; with a model whose batch costs 6 ms alone, that wait loses more than a larger
    batch gains (8 queued, more than the 6 that come during the fixed cost): the batch goes
    at once.  With a fixed cost of 10 ms (10 come meanwhile) it still waits."""
    b = impl.Batcher(1000, 0.002, 0.5)
    s = sizer(impl, fixed=64)
    now = 0.0
    qid = 0
    for _ in range(50):  # 0.5 s of arrivals, a batch every 10 ms, answered at once
        for _ in range(10):
            qid += 1
            b.admit(query(impl, qid, now, now + 1.0), now, [], [])
            now += 0.001
        b.returned(len(b.take(now, s, [])), now)
    assert b.comeback < 0.5 and b.arrival_rate(now) == pytest.approx(1000, rel=0.05)
    assert b.population() == 10
    for _ in range(8):  # a burst
        qid += 1
        b.admit(query(impl, qid, now, now + 1.0), now, [], [])
        now += 1e-5
    cost = 0.0375  # a full batch of 64
    assert b.dispatch_at(now, 64, fixed_share=0.006 / cost, cost=cost) == now
    assert b.dispatch_at(now, 64, fixed_share=0.010 / cost, cost=cost) > now
    assert b.dispatch_at(now, 64) > now, "unmeasured: delayed batching waits as before"


def test_a_stale_measurement_lets_a_probe_through(impl):
    b = impl.Batcher(100, 0.0, 0.5)
    s = measured(impl, 1, 0.4, busy_until=0.0)  # slow once: 400 ms against a 100 ms SLO
    assert b.admit(query(impl, 1, 0.5, 0.6), 0.5, [s], []) == impl.LATE
    # idle for 10 batch latencies (and at least probe_after): the estimate is stale, one
    # query may measure again
    now = max(b.probe_after, 10 * 0.4) - 0.01
    assert b.admit(query(impl, 2, now, now + 0.1), now, [s], []) == impl.LATE
    now += 0.02
    assert b.admit(query(impl, 2, now, now + 0.1), now, [s], []) == impl.ADMIT
    assert [q.query_id for q in b.take(now, s, [])] == [2]


def test_expected_latency_follows_the_measured_line(impl):
    s = sizer(impl, budget=1.0)
    assert s.expected(10) == 0.0
    for n in (1, 5, 10, 20, 40, 10, 30):
        s.observe(n, 0.002 + 0.0001 * n, 1.0)
    for n in (1, 16, 64):
        assert s.expected(n) == pytest.approx(0.002 + 0.0001 * n, rel=1e-6)
    one = sizer(impl, fixed=8, budget=1.0)
    one.observe(8, 0.008, 1.0)
    assert one.expected(16) == one.expected(4) == pytest.approx(0.008), "no slope: as seen"


def test_a_first_small_batch_does_not_shut_out_full_ones(impl):
    # a first batch of one took 8 ms; batches of 32 must still go out and be measured
    b = impl.Batcher(1000, 0.0, 0.5)
    s = measured(impl, 32, 0.008, busy_until=0.0)
    s.observe(1, 0.008, 1.0)
    now = 0.01
    for i in range(63):
        assert b.admit(query(impl, i, now, now + 0.1), now, [s], []) == impl.ADMIT
    expired = []
    assert len(b.take(now, s, expired)) == 32 and not expired


def test_a_tight_deadline_at_light_load_fits_the_next_small_batch(impl):
    b = impl.Batcher(1000, 0.0, 0.5)
    s = sizer(impl, initial=100, budget=1.0)
    for n in (10, 50, 100, 100, 60):  # 1 ms + 0.5 ms per item: a full batch takes 51 ms
        s.observe(n, 0.001 + 0.0005 * n, 1.0)
    assert s.current >= 100
    now = 1.0
    s.busy_until = now
    # a 20 ms timeout: no full batch fits, but a smaller one does (about 1 + 0.5 * 38 ms)
    cap = b.capacity_by(now + 0.02, now, [s])
    assert 30 <= cap < 100 and s.expected(cap) <= 0.02 < s.expected(cap + 1)
    assert b.admit(query(impl, 1, now, now + 0.02), now, [s], []) == impl.ADMIT
    # with the replica busy for the next 30 ms it cannot make it
    s.busy_until = now + 0.03
    assert b.admit(query(impl, 2, now, now + 0.02), now, [s], []) == impl.LATE


def test_one_stall_does_not_throw_the_latency_line_off(impl):
    s = sizer(impl, fixed=10, budget=1.0)
    for _ in range(30):
        s.observe(10, 0.002, 1.0)
    s.observe(10, 0.5, 1.0)  # the replica was descheduled for half a second
    # it weighs about a tenth, and counts at most 4x the expectation: +30 %, not +2500 %
    assert s.expected(10) <= 0.002 * 1.35
    for _ in range(30):  # a real, lasting slowdown is followed within a few batches
        s.observe(10, 0.02, 1.0)
    assert s.expected(10) == pytest.approx(0.02, rel=0.05)


def test_admission_counts_the_smaller_batch_that_fits_after_the_full_ones(impl):
    # measured 5 ms + 0.5 ms per query, batches of 10: by a deadline 18 ms away one full
    # batch (10 ms) and then one of 6 (8 ms) finish, so 16 queries can be answered in time
    s = sizer(impl, fixed=10, budget=1.0)
    for n in (10, 2, 10, 2):
        s.observe(n, 0.005 + 0.0005 * n, 1.0)
    assert s.expected(6) == pytest.approx(0.008)
    b = impl.Batcher(10_000, 0.0, 0.5)
    assert b.capacity_by(0.0181, 0.0, [s]) == 16
    for i in range(15):
        b.queue.push(query(impl, i, 0.0, 0.001 * i))
    assert b.admit(query(impl, 100, 0.0, 0.0181), 0.0, [s], []) == impl.ADMIT  # 16th
    assert b.admit(query(impl, 101, 0.0, 0.0181), 0.0, [s], []) == impl.LATE  # 17th
