"""clipper-bench statistics: percentile definition, mean/sd, stability rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipper_core.bench.stats import (
    LatencySummary,
    WindowStat,
    agree_within,
    is_stable,
    mean_sd,
    percentile_sorted,
    percentiles,
    summarize,
)

# Hand-computed with h = (n - 1) * q / 100, P = x[floor h] + frac(h) * (x[floor h + 1] - x[floor h]).
HAND = [
    ([10, 20, 30, 40], 0, 10.0),
    ([10, 20, 30, 40], 25, 17.5),  # h = 0.75
    ([10, 20, 30, 40], 50, 25.0),  # h = 1.5: mean of the middle two
    ([10, 20, 30, 40], 90, 37.0),  # h = 2.7
    ([10, 20, 30, 40], 100, 40.0),
    ([15, 20, 35, 40, 50], 40, 29.0),  # h = 1.6 -> 20 + 0.6 * 15
    ([1, 2, 3, 4, 5], 50, 3.0),  # h = 2 exactly
    ([1, 2, 3, 4, 5], 99, 4.96),  # h = 3.96
    ([7.5], 0, 7.5),
    ([7.5], 99.9, 7.5),
    (list(range(1, 1001)), 99.9, 999.001),  # h = 998.001
]


@pytest.mark.parametrize(("xs", "q", "expected"), HAND)
def test_percentile_hand_computed(xs, q, expected):
    assert percentile_sorted(xs, q) == pytest.approx(expected, abs=1e-9)


def test_percentiles_sorts_its_input():
    got = percentiles([40, 10, 30, 20], (50, 90))
    assert got == {50: pytest.approx(25.0), 90: pytest.approx(37.0)}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_matches_numpy_linear(xs, q):
    ours = percentile_sorted(sorted(xs), q)
    theirs = float(np.percentile(np.asarray(xs), q, method="linear"))
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9)


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError, match="empty"):
        percentile_sorted([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile_sorted([1.0], 100.5)


def test_mean_and_sample_sd():
    mean, sd = mean_sd([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0
    assert sd == pytest.approx(math.sqrt(32 / 7))  # divisor n - 1
    assert mean_sd([3.0]) == (3.0, 0.0)


def test_summarize():
    s = summarize([0.004, 0.001, 0.003, 0.002])
    assert s.count == 4
    assert (s.min, s.max) == (0.001, 0.004)
    assert s.p50 == pytest.approx(0.0025)
    assert s.p90 == pytest.approx(0.0037)
    assert s.as_ms()["p99.9"] == pytest.approx(s.p999 * 1e3)
    assert summarize([]) == LatencySummary(count=0)
    assert summarize([]).as_ms()["p50"] is None


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([100, 105, 110], 10, True),  # exactly 10 % above the smallest
        ([100, 105, 110.5], 10, False),
        ([100, 100, 100], 0, True),
        ([0, 0, 0], 10, True),
        ([0, 1, 1], 10, False),
        ([], 10, False),
    ],
)
def test_agree_within(values, pct, expected):
    assert agree_within(values, pct) is expected


def W(thr, p99):
    return WindowStat(throughput=thr, p99=p99)


def test_stable_needs_three_windows_that_agree_on_both():
    assert not is_stable([W(100, 0.010), W(100, 0.010)], 10)
    assert is_stable([W(100, 0.010), W(104, 0.0105), W(98, 0.0101)], 10)
    # throughput agrees, p99 does not
    assert not is_stable([W(100, 0.010), W(100, 0.012), W(100, 0.010)], 10)
    # p99 agrees, throughput does not
    assert not is_stable([W(100, 0.010), W(120, 0.010), W(100, 0.010)], 10)
    # a window without answers has no p99
    assert not is_stable([W(100, 0.010), W(0, None), W(100, 0.010)], 10)


def test_stable_looks_only_at_the_last_three():
    early_noise = [W(10, 0.5), W(500, 0.001)]
    steady = [W(200, 0.004), W(205, 0.0041), W(210, 0.0042)]
    assert is_stable(early_noise + steady, 10)
    assert not is_stable(steady + early_noise[:1], 10)


def test_stable_tolerance_is_the_given_percentage():
    ws = [W(100, 0.010), W(104, 0.010), W(100, 0.010)]
    assert is_stable(ws, 5)
    assert not is_stable(ws, 3)
    with pytest.raises(ValueError):
        is_stable(ws, -1)
