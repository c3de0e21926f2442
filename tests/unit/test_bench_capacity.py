"""clipper-bench's open-loop capacity search: the sans-IO bracket, and the CLI end to end
against a fake server of known capacity."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from clipper_core.bench.capacity import CapacitySearch
from clipper_core.bench.cli import main
from clipper_core.bench.testing import FakeOptions, ThreadedFakeServer


def search(lo, hi, true_cap, tol=0.05):
    s = CapacitySearch(lo, hi, tol, max_steps=100)
    rates = []
    while (r := s.next_rate()) is not None:
        rates.append(r)
        s.record(r, r <= true_cap)
    return s, rates


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 1e4), st.floats(1.01, 100.0), st.floats(0.0, 1.0), st.floats(0.01, 0.5))
def test_the_bracket_closes_on_the_capacity(lo, span, where, tol):
    hi = lo * span
    true_cap = lo + where * (hi - lo)
    s, rates = search(lo, hi, true_cap, tol)
    assert all(lo <= r <= hi for r in rates)
    assert s.capacity is not None and s.capacity <= true_cap
    if s.bounded:
        assert s.bad > true_cap and s.bad <= s.capacity * (1 + tol)
    else:
        assert s.capacity == hi


def test_below_the_range_and_above_it():
    s, rates = search(100.0, 1000.0, 50.0)
    assert rates == [100.0] and s.capacity is None
    s, rates = search(100.0, 1000.0, 5000.0)
    assert rates == [100.0, 1000.0] and s.capacity == 1000.0 and not s.bounded
    with pytest.raises(ValueError):
        CapacitySearch(10.0, 5.0)


def test_cli_finds_the_capacity_of_a_server_that_answers_200_per_second(capsys):
    # one request at a time, 5 ms each: at 200/s and more the queue grows without bound
    with ThreadedFakeServer(FakeOptions(delay=0.005, concurrency=1)) as srv:
        code = main(["--url", srv.url(), "--find-capacity", "20,800", "--slo-ms", "50",
                     "--duration", "0.6", "--warmup", "0.2", "--workers", "0", "--quiet",
                     "--stats-url", "none", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    m = re.search(r"capacity: ([0-9.]+) req/s", out)
    assert m, out
    assert 20 <= float(m.group(1)) <= 210, out
    assert "goodput/s" in out
