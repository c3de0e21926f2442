"""AIMD goes by the model's cost as the container reports it (``compute_us``), not by the
round trip, which also holds the frontend's own delays: sans-IO core and the scheduler on
virtual time, both twins."""

import pytest
from hypothesis import given, settings, strategies as st

from clipper_core.scheduler import BatchingConfig

from schedsim import Sim


def sizer(impl, budget=0.01):
    return impl.BatchSizer(-1, 1, 2, 0.9, budget, 1024)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.03), st.floats(0.0, 0.5)), min_size=1,
                max_size=300))
def test_the_size_follows_compute_whatever_the_round_trip_adds(impl, batches):
    """Any lag on top of the compute time (a round trip >= compute) leaves the AIMD size
    exactly where the compute times alone put it."""
    lagged, plain = sizer(impl), sizer(impl)
    for compute, lag in batches:
        n = lagged.current  # full batches
        assert plain.current == n
        lagged.observe(n, compute + lag, 0.01, compute)
        plain.observe(n, compute, 0.01, compute)
    assert lagged.current == plain.current
    assert (lagged.increases, lagged.decreases) == (plain.increases, plain.decreases)


def test_compute_over_budget_backs_off_and_unreported_compute_uses_the_round_trip(impl):
    s = sizer(impl)
    for _ in range(10):
        s.observe(s.current, 0.002, 0.01, 0.001)
    assert s.current == 21
    s.observe(s.current, 0.002, 0.01, 0.02)  # the model itself overran
    assert s.current == 18 and s.decreases == 1
    s.observe(s.current, 0.02, 0.01)  # no compute reported: the round trip decides
    assert s.current == 16 and s.decreases == 2
    s.observe(s.current, 0.02, 0.01, -1.0)
    assert s.current == 14 and s.decreases == 3


def linear(a, b):
    return lambda n: a + b * n


def steady_size(impl, delay=None, report_compute=True, max_in_flight=1):
    """Mean AIMD size over the second half of 1.2 s of virtual time under open-loop load
    at twice what the best batch serves; model 1 ms + 0.05 ms per item, SLO 40 ms and a
    quarter of it for a batch (batch budget 10 ms: the largest batch in it is 180).  The
    SLO leaves room for the lag, so that no query's deadline cuts a batch short: only AIMD
    decides the size.  One batch in flight per replica unless told otherwise, so that only
    the lag differs."""
    sim = Sim(impl, BatchingConfig(batch_wait_s=0.0, aimd_step=4, max_in_flight=max_in_flight,
                                   budget_fraction=0.25), slo=0.04)
    sim.add_replica("r", latency=linear(1e-3, 5e-5), delay=delay, report_compute=report_compute)
    s = sim.replica("r").sizer
    sizes = []
    for _ in range(1200):
        for _ in range(40):
            sim.submit()
        sim.loop.advance(0.001)
        sizes.append(s.current)
    sim.loop.advance(1.0)
    tail = sizes[len(sizes) // 2:]
    return sum(tail) / len(tail)


def test_frontend_lag_does_not_shrink_the_batch_size(impl):
    """The frontend sees every answer 4 ms late (a 180-query batch then takes 14 ms from
    the frontend's view, over its 10 ms budget, as under a CPU hog): with the container's
    compute time the size stays where it was unloaded; judged by the round trip (no compute
    reported, the old rule) it shrinks."""
    unloaded = steady_size(impl)
    assert unloaded > 150
    lagged = steady_size(impl, delay=lambda n: 0.004)
    assert lagged >= 0.9 * unloaded
    blind = steady_size(impl, delay=lambda n: 0.004, report_compute=False)
    assert blind < 0.7 * unloaded, "the round trip alone shrinks the batches"


@pytest.mark.parametrize("fixed", [8])
def test_a_fixed_size_ignores_compute(impl, fixed):
    s = impl.BatchSizer(fixed, 1, 2, 0.9, 0.01, 1024)
    s.observe(fixed, 0.5, 0.01, 0.5)
    assert s.current == fixed


def test_frontend_lag_keeps_the_pipelined_batch_size_within_a_factor_of_two(impl):
    """With the default two batches in flight per replica, the same lag leaves the size
    within a factor of two of its unloaded value (issue 14's bound under a CPU hog)."""
    unloaded = steady_size(impl, max_in_flight=2)
    lagged = steady_size(impl, delay=lambda n: 0.004, max_in_flight=2)
    assert lagged >= 0.5 * unloaded
