"""clipper-bench level accounting and early stop, driven by a scripted pool (no network, no clock)."""

from __future__ import annotations

from array import array

import pytest

from clipper_core.bench.loadgen import CONNECTION_ERROR, TIMEOUT
from clipper_core.bench.runner import BenchConfig, run_level
from clipper_core.bench.target import FLAG_CACHE_HIT, FLAG_DEFAULT, build_target

TARGET = build_target("http://127.0.0.1:9/app/predict", stats_url="none")


def payload(rows):
    """rows of (send, lat, lag, status, flags) -> the bytes a worker sends."""
    cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
    codes = ("d", "d", "d", "h", "B")
    return tuple(array(code, col).tobytes() for code, col in zip(codes, cols))


class ScriptedPool:
    """Plays one worker: window j holds ``spec[j] = (answers, latency)`` spread over the window.

    Extra rows go into chosen batches or the final message; CPU time grows by
    ``cpu_per_window`` per window. It honours ``stop_after`` as a worker does.
    """

    workers = 1

    def __init__(self, spec, *, extra=None, final_rows=(), cpu_per_window=0.25):
        self.spec = spec
        self.extra = extra or {}
        self.final_rows = list(final_rows)
        self.cpu_per_window = cpu_per_window
        self.stop_calls = []

    async def start(self):
        pass

    async def begin(self, plan):
        self.plan = plan
        self.stop = plan.windows
        self.b = 0
        self.finished = False
        return 1000.0

    def stop_after(self, k):
        self.stop_calls.append(k)
        self.stop = k

    async def recv(self):
        if self.finished:
            raise AssertionError("recv after the final message")
        w = self.plan.window
        last = min(self.stop, self.plan.windows, len(self.spec))
        if self.b > last:
            self.finished = True
            return ("final", 0, self.b * self.cpu_per_window, payload(self.final_rows), 0)
        b = self.b
        self.b += 1
        rows = []
        if b >= 1:
            j = b - 1
            n, lat = self.spec[j]
            rows = [(j * w + (i + 0.5) * w / n - lat, lat, 0.0, 200, 0) for i in range(n)]
        rows += self.extra.get(b, [])
        return ("batch", 0, b, b * self.cpu_per_window, payload(rows))

    async def close(self):
        pass


def cfg(**kw):
    base = {"target": TARGET, "mode": "closed", "levels": (4.0,), "warmup": 0.0, "window": 1.0, "workers": 1}
    base.update(kw)
    return BenchConfig(**base)


async def test_stability_stops_after_three_agreeing_windows():
    spec = [(50, 0.005), (200, 0.002), (100, 0.010), (102, 0.0101), (98, 0.0099), (100, 0.010)]
    pool = ScriptedPool(spec)
    res = await run_level(pool, cfg(max_windows=10), 0)
    assert pool.stop_calls == [5]  # windows 3..5 are the first three that agree
    assert [w.throughput for w in res.windows] == [50, 200, 100, 102, 98]
    assert res.stable is True
    assert res.duration == 5.0
    assert res.sent == res.ok == 50 + 200 + 100 + 102 + 98
    assert res.achieved_rps == pytest.approx(550 / 5)
    assert res.generator_cpu == pytest.approx(0.25)  # 0.25 s of CPU per 1 s window


async def test_unstable_level_runs_to_max_windows():
    spec = [(100, 0.010), (150, 0.010)] * 4
    pool = ScriptedPool(spec)
    res = await run_level(pool, cfg(max_windows=6), 0)
    assert pool.stop_calls == []
    assert len(res.windows) == 6
    assert res.stable is False


async def test_fixed_duration_does_not_stop_early():
    spec = [(100, 0.010)] * 4
    pool = ScriptedPool(spec)
    res = await run_level(pool, cfg(duration=4.0, window=1.0), 0)
    assert pool.stop_calls == []
    assert len(res.windows) == 4
    assert res.stable is True  # still judged, over the last three windows


async def test_measured_requests_and_arrivals_are_told_apart():
    spec = [(10, 0.001), (10, 0.001)]
    extra = {
        # sent during warm-up, answered in window 0: throughput yes, latency no
        1: [(-0.5, 0.6, 0.0, 200, 0)],
        # a 500 and a connection error during measurement
        2: [(1.2, 0.01, 0.0, 500, 0), (1.3, 0.001, 0.0, CONNECTION_ERROR, 0)],
    }
    final_rows = [
        (1.99, 0.5, 0.2, 200, FLAG_DEFAULT),  # sent in time, answered after the end: latency yes
        (1.98, 30.0, 0.0, TIMEOUT, 0),
        (2.10, 0.001, 0.0, 200, FLAG_CACHE_HIT),  # sent after the end: not measured
    ]
    pool = ScriptedPool(spec, extra=extra, final_rows=final_rows)
    res = await run_level(pool, cfg(duration=2.0, window=1.0, slo_ms=100.0), 0)
    assert res.duration == 2.0
    assert res.sent == 20 + 2 + 2
    assert res.ok == 21
    assert res.errors == {"500": 1, "connection_error": 1, "timeout": 1}
    assert res.achieved_rps == pytest.approx((20 + 1) / 2.0)
    assert res.offered_rps == pytest.approx(24 / 2.0)
    assert res.latency.count == 21
    assert res.latency.max == pytest.approx(0.5)
    assert res.slo_attainment == pytest.approx(20 / 24)  # errors and the slow one miss the SLO
    assert res.default_share == pytest.approx(1 / 21)
    assert res.cache_hit_share == 0.0
    # goodput: the 20 predictions within the SLO (not the default, not the errors), per s
    assert res.goodput_rps == pytest.approx(20 / 2.0)


async def test_a_latency_is_never_negative():
    # an answer stamped a hair before its scheduled send (clock skew between reads)
    pool = ScriptedPool([(5, 0.001)], final_rows=[(0.5, -0.0002, 0.0, 200, 0)])
    res = await run_level(pool, cfg(duration=1.0, window=1.0, slo_ms=100.0), 0)
    assert res.latency.min == 0.0 and (res.raw["lat"] >= 0).all()


async def test_progress_sees_every_window_and_the_end():
    events = []

    class Rec:
        def level_start(self, index, total, label):
            events.append(("start", label))

        def window(self, index, total, label, n, limit, stat):
            events.append(("window", n, limit, stat.throughput))

        def level_done(self, result, total):
            events.append(("done", result.label))

    await run_level(ScriptedPool([(5, 0.001), (6, 0.001)]), cfg(duration=2.0), 0, progress=Rec())
    assert events == [("start", "c=4"), ("window", 1, 2, 5.0), ("window", 2, 2, 6.0), ("done", "c=4")]


def test_config_validation():
    from clipper_core.bench.target import BenchConfigError

    with pytest.raises(BenchConfigError, match="--concurrency"):
        cfg(levels=(0.0,))
    with pytest.raises(BenchConfigError, match="--rate"):
        cfg(mode="open", levels=(0.0,))
    with pytest.raises(BenchConfigError, match="not both"):
        cfg(duration=1.0, requests=10)
    with pytest.raises(BenchConfigError, match="--window"):
        cfg(window=0.0)
    # a duration is tiled by whole windows
    plan = cfg(duration=10.0, window=3.0).plan(0)
    assert (plan.windows, plan.window) == (3, pytest.approx(10 / 3))
