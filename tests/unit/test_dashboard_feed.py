"""The dashboard's feed: histogram arithmetic, frames from two samples, the broadcaster and the
list of the last errors and refusals (sans-IO parts; the page itself is tested in a browser)."""

import asyncio
import logging
import math
from bisect import bisect_left

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from clipper_core.dashboard.feed import EventLog, Feed, delta, derive, quantile, share_within
from clipper_core.metrics import SECONDS_BUCKETS

BOUNDS = SECONDS_BUCKETS


def bucketed(values):
    counts = [0] * (len(BOUNDS) + 1)
    for v in values:
        counts[bisect_left(BOUNDS, v)] += 1  # as metrics.Histogram.observe does
    return counts


def bucket_of(v):
    i = bisect_left(BOUNDS, v)
    lo = BOUNDS[i - 1] if i > 0 else 0.0
    hi = BOUNDS[i] if i < len(BOUNDS) else math.inf
    return lo, hi


latencies = st.lists(st.floats(min_value=1e-6, max_value=20.0), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(latencies, st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values, q):
    est = quantile(BOUNDS, bucketed(values), q)
    true = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]  # nearest rank
    lo, hi = bucket_of(true)
    if hi == math.inf:
        assert est == BOUNDS[-1]  # above the last bound: a lower limit
    else:
        assert lo <= est <= hi, (est, true, lo, hi)


@settings(max_examples=200, deadline=None)
@given(latencies, st.floats(min_value=1e-5, max_value=15.0))
def test_share_within_is_exact_at_bounds_and_bracketed_between(values, limit):
    counts = bucketed(values)
    n = len(values)
    for b in BOUNDS:
        assert share_within(BOUNDS, counts, b) == pytest.approx(sum(v <= b for v in values) / n)
    est = share_within(BOUNDS, counts, limit)
    lo, hi = bucket_of(limit)
    assert sum(v <= lo for v in values) / n - 1e-9 <= est
    if hi != math.inf:
        assert est <= sum(v <= hi for v in values) / n + 1e-9


def test_no_observations_give_none():
    empty = [0] * (len(BOUNDS) + 1)
    assert quantile(BOUNDS, empty, 0.99) is None
    assert share_within(BOUNDS, empty, 0.1) is None


def test_delta_of_cumulative_counts_and_a_reset():
    assert delta([5, 7, 9], [1, 2, 3]) == [4, 5, 6]
    assert delta([5, 7, 9], None) == [5, 7, 9]
    assert delta([1, 0, 0], [5, 7, 9]) == [1, 0, 0]  # counters went back: a new histogram


def _sample(t, *, prediction=0, default=0, shed=0, hits=0, misses=0, latencies=(),
            batches=(0, 0.0), compute=(0, 0.0), queries=0, weights=None, selected=0):
    return {
        "t": t, "wall": 1_000_000.0 + t, "latency_bounds": BOUNDS,
        "apps": [{"name": "a", "input_type": "doubles", "slo_ms": 20.0, "policy": "exp3",
                  "default_output": -1, "cache_enabled": True, "models": ["m"],
                  "counts": {"prediction": prediction, "default": default, "shed": shed,
                             "error": 0, "cache_hits": hits, "cache_misses": misses},
                  "latency": bucketed(latencies)}],
        "models": [{"name": "m", "version": "1", "label": "m:1", "current": True,
                    "input_type": "doubles", "target_replicas": 1, "kind": "closure",
                    "gpus": [], "batching": {}, "queue_depth": 3, "queries": queries,
                    "shed": 0, "expired": 0, "errors": 0, "batches": batches[0],
                    "stats": {"batch_size": batches, "model_compute_s": compute},
                    "aimd": {"r1": 4, "r2": 6}, "connected": 2, "up": 2}],
        "replicas": [], "cache": None, "events": [],
        "selection": {"a": {"policy": "exp3", "feedback": 0, "policy_errors": 0,
                            "models": {"m": {"selected": selected, "weight": weights,
                                             "feedback": 0, "mean_loss": None}}}},
    }


def test_a_frame_holds_rates_percentiles_and_the_slo_share_of_the_last_interval():
    old = _sample(10.0, prediction=100, default=5, hits=20, misses=85,
                  latencies=[0.001] * 105, batches=(10, 40.0), compute=(10, 0.05),
                  queries=85, selected=100)
    # in the next 2 s: 200 predictions, 10 defaults, 10 shed; 198 under 5 ms, 22 at 50 ms
    new = _sample(12.0, prediction=300, default=15, shed=10, hits=70, misses=255,
                  latencies=[0.001] * 105 + [0.004] * 198 + [0.05] * 22,
                  batches=(60, 440.0), compute=(60, 0.55), queries=255, weights=0.75,
                  selected=300)
    f = derive(old, new)
    a = f["apps"][0]
    assert a["rate"] == pytest.approx(110.0)  # (200 + 10 + 10) / 2 s
    assert a["default_rate"] == pytest.approx(5.0) and a["shed_rate"] == pytest.approx(5.0)
    assert a["cache_hit"] == pytest.approx(50 / 220, abs=1e-4)  # rounded for the page
    assert 2.5 <= a["p50_ms"] <= 5.0  # in the (2.5 ms, 5 ms] bucket
    assert 25.0 <= a["p99_ms"] <= 50.0
    assert a["within_slo"] == pytest.approx(198 / 220, abs=1e-4)  # 20 ms SLO: all of the 5 ms bucket
    m = f["models"][0]
    assert m["rate"] == pytest.approx(85.0)
    assert m["batch_mean"] == pytest.approx(8.0)  # 400 queries in 50 batches
    assert m["compute_ms"] == pytest.approx(10.0)
    assert m["aimd_max"] == 6 and m["queue_depth"] == 3
    assert f["selection"]["a"]["models"]["m"]["selected_rate"] == pytest.approx(100.0)
    p = f["point"]
    assert p["t"] == new["wall"]
    assert p["apps"]["a"][:5] == [a["rate"], a["p50_ms"], a["p99_ms"], a["within_slo"], 20.0]
    assert p["models"]["m:1"][:4] == [8.0, 3, 10.0, 6]
    assert p["weights"] == {"a": {"m": 0.75}}
    orjson.dumps(f)  # the frame is JSON


def test_the_first_frame_and_a_quiet_interval_have_no_percentiles():
    s = _sample(1.0, prediction=5, latencies=[0.001] * 5)
    first = derive(None, s)
    assert first["apps"][0]["rate"] == 0 and first["apps"][0]["p99_ms"] is None
    quiet = derive(s, dict(s, t=2.0))
    a = quiet["apps"][0]
    assert a["rate"] == 0 and a["p50_ms"] is None and a["within_slo"] is None
    assert quiet["models"][0]["batch_mean"] is None


def test_feed_reads_nothing_until_watched_and_once_per_frame_for_any_number_of_pages():
    reads = []

    def read():
        reads.append(1)
        return _sample(float(len(reads)), prediction=len(reads))

    async def main():
        feed = Feed(read, interval_s=0.02)
        await asyncio.sleep(0.1)
        assert reads == []  # no page open: no work at all
        q1, q2 = feed.watch(), feed.watch()
        got1, got2 = [await q1.get() for _ in range(3)], [await q2.get() for _ in range(3)]
        assert got1 == got2  # the same serialised frames for both
        assert len(reads) in (3, 4)
        assert orjson.loads(got1[-1])["feed"]["watchers"] == 2
        assert orjson.loads(feed.history_json())[0]["t"] == orjson.loads(got1[0])["t"]
        feed.unwatch(q1)
        feed.unwatch(q2)
        await asyncio.sleep(0.1)
        n = len(reads)
        await asyncio.sleep(0.1)
        assert len(reads) == n  # the last page went: the feed stopped
        slow = feed.watch()
        await asyncio.sleep(0.3)  # ~15 frames for a page that reads none of them
        assert slow.qsize() <= 4  # a slow page misses frames; nothing piles up
        await feed.close()
        while (item := slow.get_nowait()) is not None:
            pass
        assert item is None  # streams end when the server stops

    asyncio.run(main())


def test_event_log_keeps_errors_and_refusals_and_counts_repeats():
    ev = EventLog(size=3)
    lg = logging.getLogger("clipper.test-dashboard")
    lg.setLevel(logging.INFO)
    access = logging.getLogger("clipper.access")
    old = access.level
    access.setLevel(logging.INFO)
    ev.attach()
    try:
        lg.info("deployed: not an error")
        lg.warning("replica %s is suspect", "r1")
        access.info("%s %s -> %d %s", "POST", "/a/predict", 400, "bad input")
        access.info("%s %s -> %d %s", "POST", "/a/predict", 400, "bad input")
        lg.error("boom %d", 1)
        lg.error("boom %d", 2)
    finally:
        ev.detach()
        access.setLevel(old)
    msgs = [(e["level"], e["message"], e["count"]) for e in ev.events]
    assert msgs == [("INFO", "POST /a/predict -> 400 bad input", 2), ("ERROR", "boom 1", 1),
                    ("ERROR", "boom 2", 1)]
    lg.error("after detach")
    assert len(ev.events) == 3 and ev.events[-1]["message"] == "boom 2"
