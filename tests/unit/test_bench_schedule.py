"""clipper-bench open-loop arrival schedules."""

from __future__ import annotations

import itertools
import statistics

import pytest

from clipper_core.bench.schedule import arrivals, constant_arrivals, poisson_arrivals


def take(it, n):
    return list(itertools.islice(it, n))


def test_constant_schedule_is_exact():
    assert take(constant_arrivals(4.0), 6) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    # i / rate, not a running sum: no drift after many arrivals
    assert take(constant_arrivals(1000.0), 100_001)[-1] == 100.0


def test_constant_schedule_split_over_workers_interleaves_exactly():
    whole = take(constant_arrivals(300.0), 300)
    parts = [take(constant_arrivals(300.0, worker=w, workers=3), 100) for w in range(3)]
    assert sorted(itertools.chain(*parts)) == whole


def test_poisson_schedule_is_seeded():
    a = take(poisson_arrivals(100.0, 7), 1000)
    b = take(poisson_arrivals(100.0, 7), 1000)
    c = take(poisson_arrivals(100.0, 8), 1000)
    assert a == b
    assert a != c
    assert all(x < y for x, y in itertools.pairwise(a))
    # workers of one run draw different streams
    assert take(poisson_arrivals(100.0, 7, worker=1, workers=2), 10) != take(
        poisson_arrivals(100.0, 7, worker=0, workers=2), 10
    )


@pytest.mark.parametrize("rate", [50.0, 5000.0])
def test_poisson_inter_arrival_mean_and_spread(rate):
    n = 50_000
    times = take(poisson_arrivals(rate, 1234), n)
    gaps = [times[0]] + [y - x for x, y in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    # standard error of the mean is (1/rate)/sqrt(n), about 0.45 % here
    assert mean == pytest.approx(1.0 / rate, rel=0.03)
    # exponential gaps: coefficient of variation 1 (a constant schedule has 0)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, rel=0.05)


def test_poisson_split_keeps_the_total_rate():
    rate, horizon, workers = 2000.0, 20.0, 4
    count = 0
    for w in range(workers):
        for t in poisson_arrivals(rate, 99, worker=w, workers=workers):
            if t >= horizon:
                break
            count += 1
    assert count == pytest.approx(rate * horizon, rel=0.03)


def test_arrivals_validates():
    assert take(arrivals("constant", 2.0, 0), 2) == [0.0, 0.5]
    with pytest.raises(ValueError, match="poisson, constant"):
        arrivals("bursty", 2.0, 0)
    with pytest.raises(ValueError, match="> 0"):
        constant_arrivals(0.0)
    with pytest.raises(ValueError, match="worker index"):
        poisson_arrivals(1.0, 0, worker=2, workers=2)
