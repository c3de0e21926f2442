"""clipper-bench against a real in-process HTTP server on 127.0.0.1.

No assertion here is about speed. Where time matters it is through lower bounds
that the server's own sleeps guarantee, which a slow machine only loosens.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import numpy as np
import pytest

from clipper_core.bench.loadgen import WorkerError
from clipper_core.bench.runner import BenchConfig, run_sweep
from clipper_core.bench.target import build_target
from clipper_core.bench.testing import STATS_BATCH_WAIT_S, STATS_QUEUE_S, FakeOptions, FakeServer

pytestmark = pytest.mark.timeout(60)


def config(url, **kw):
    target_kw = {k: kw.pop(k) for k in ("body_template", "input_json", "stats_url") if k in kw}
    base = {
        "target": build_target(url, **target_kw),
        "mode": "closed",
        "levels": (1.0,),
        "warmup": 0.1,
        "duration": 0.4,
        "window": 0.2,
        "workers": 0,
        "timeout": 10.0,
    }
    base.update(kw)
    return BenchConfig(**base)


async def one_level(url, **kw):
    res = await run_sweep(config(url, **kw))
    assert len(res.levels) == 1
    return res.levels[0]


@pytest.mark.parametrize("max_inflight", [1, 1000], ids=["client-queue", "server-queue"])
async def test_open_loop_latency_counts_from_the_scheduled_time(max_inflight):
    """40 req/s at a server that serves one request per 50 ms (20 req/s).

    Request k is scheduled at k/40 s but cannot finish before (k+1) * 50 ms, so its
    latency from the schedule is at least 50 ms + k * 25 ms. A generator measuring
    from the actual send would hide this when the queue is on the client side
    (max_inflight=1); ours must not.
    """
    async with FakeServer(FakeOptions(delay=0.05, concurrency=1)) as srv:
        lvl = await one_level(
            srv.url(),
            mode="open",
            levels=(40.0,),
            arrivals="constant",
            warmup=0.0,
            duration=0.5,
            window=0.25,
            max_inflight=max_inflight,
        )
    assert lvl.sent == 20 and lvl.ok == 20 and not lvl.errors
    order = np.argsort(lvl.raw["send"])
    send, lat, lag = lvl.raw["send"][order], lvl.raw["lat"][order], lvl.raw["lag"][order]
    assert send == pytest.approx(np.arange(20) / 40.0, abs=1e-9)
    floor = 0.05 + 0.025 * np.arange(20)
    assert np.all(lat >= floor - 0.002), (lat, floor)
    assert lvl.latency.max >= 0.5
    assert lvl.latency.p99 > 5 * lvl.latency.min
    # at most 10 answers fit in the 0.5 s measured: achieved <= 20/s < offered 40/s
    assert lvl.achieved_rps <= 20.0 + 1e-9
    assert lvl.offered_rps == 40.0
    if max_inflight == 1:
        # the wait happened in the client, before sending; it is in the latency
        assert lag[-1] >= 0.45
        assert np.all(lat - lag < lat[-1])


async def test_closed_loop_reports_flags_breakdown_and_slo():
    opts = FakeOptions(delay=0.002, default_every=4, cache_every=2)
    async with FakeServer(opts) as srv:
        lvl = await one_level(srv.url(), slo_ms=10_000.0)
    assert lvl.ok > 20 and lvl.sent == lvl.ok and lvl.errors == {}
    # concurrency 1: the measured requests are consecutive on the server's counter
    assert lvl.default_share == pytest.approx(0.25, abs=1.0 / lvl.ok + 1e-9)
    assert lvl.cache_hit_share == pytest.approx(0.5, abs=1.0 / lvl.ok + 1e-9)
    assert lvl.slo_attainment == 1.0
    assert lvl.latency.min >= 0.002  # the server sleeps that long
    srv_row = lvl.server["models"]["fake:1"]
    assert srv_row["queue_us"] == pytest.approx(STATS_QUEUE_S * 1e6)
    assert srv_row["batch_wait_us"] == pytest.approx(STATS_BATCH_WAIT_S * 1e6)
    assert srv_row["compute_us"] == pytest.approx(2000.0)
    assert srv_row["batch_size"] == pytest.approx(1.0)
    assert srv_row["batches"] >= lvl.ok  # the snapshots bracket at least the measured requests
    assert lvl.generator_cpu >= 0.0 and lvl.workers == 1


async def test_no_stats_endpoint_means_no_breakdown():
    async with FakeServer(FakeOptions(stats=False)) as srv:
        lvl = await one_level(srv.url())
    assert lvl.ok > 0
    assert lvl.server is None


async def test_oip_flags_come_from_parameters():
    async with FakeServer(FakeOptions(default_every=2, cache_every=5)) as srv:
        lvl = await one_level(srv.url("/v2/models/iris/infer"), input_json="[0.5, 1.5]")
    assert lvl.ok > 20
    assert lvl.default_share == pytest.approx(0.5, abs=1.0 / lvl.ok + 1e-9)
    assert lvl.cache_hit_share == pytest.approx(0.2, abs=1.0 / lvl.ok + 1e-9)
    assert lvl.server is None  # an OIP target is not asked for Clipper's /stats


async def test_errors_by_status():
    async with FakeServer(FakeOptions(error_every=3)) as srv:
        lvl = await one_level(srv.url(), levels=(2.0,))
    assert set(lvl.errors) == {"500"}
    assert lvl.ok + lvl.errors["500"] == lvl.sent
    assert lvl.errors["500"] == pytest.approx(lvl.sent / 3, abs=3)
    # failed requests are not in the latency statistics
    assert lvl.latency.count == lvl.ok


async def test_connection_errors_are_counted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on port now
    lvl = await one_level(f"http://127.0.0.1:{port}/app/predict", duration=0.2, window=0.1, warmup=0.0)
    assert lvl.ok == 0 and lvl.sent > 0
    assert lvl.errors == {"connection_error": lvl.sent}
    assert lvl.latency.count == 0 and lvl.default_share is None
    assert lvl.server is None  # /stats unreachable too: silently no breakdown


async def test_requests_quota_and_body_counter():
    async with FakeServer() as srv:
        res = await run_sweep(
            config(
                srv.url("/echo"), body_template='{"id": {{i}}}', requests=30, duration=None, levels=(3.0,), warmup=0.0
            )
        )
        ids = [json.loads(b)["id"] for b in srv.state.bodies]
    lvl = res.levels[0]
    assert lvl.sent == lvl.ok == 30
    assert sorted(ids) == list(range(30))


async def test_open_loop_requests_quota():
    async with FakeServer() as srv:
        lvl = await one_level(
            srv.url(), mode="open", levels=(200.0,), arrivals="poisson", seed=5, requests=25, duration=None, warmup=0.05
        )
    assert lvl.sent == lvl.ok == 25
    assert lvl.send_lag is not None and lvl.send_lag.count == 25


async def test_stability_mode_is_bounded_and_reported():
    async with FakeServer() as srv:
        lvl = await one_level(srv.url(), duration=None, window=0.1, max_windows=5, stability_pct=50.0, warmup=0.05)
    assert 1 <= len(lvl.windows) <= 5
    if lvl.stable:
        assert len(lvl.windows) >= 3
    assert lvl.duration == pytest.approx(0.1 * len(lvl.windows))


async def test_sweep_runs_every_level_in_order():
    async with FakeServer() as srv:
        res = await run_sweep(config(srv.url(), levels=(1.0, 4.0), duration=0.2, window=0.1))
    assert [lvl.level for lvl in res.levels] == [1.0, 4.0]
    assert all(lvl.ok > 0 for lvl in res.levels)


async def test_worker_processes_split_the_load_and_merge_samples():
    async with FakeServer(FakeOptions(delay=0.001)) as srv:
        res = await run_sweep(
            config(
                srv.url("/echo"),
                body_template='{"id": {{i}}}',
                levels=(4.0,),
                requests=40,
                duration=None,
                workers=2,
                warmup=0.0,
            )
        )
        ids = sorted(json.loads(b)["id"] for b in srv.state.bodies)
    lvl = res.levels[0]
    assert lvl.workers == 2
    assert lvl.sent == lvl.ok == 40
    assert ids == list(range(40))  # worker w sends w, w + 2, w + 4, ...
    assert lvl.generator_cpu > 0.0


async def test_a_failing_worker_stops_the_sweep_with_its_traceback():
    async with FakeServer() as srv:
        cfg = config(srv.url())
        # build_target refuses this; a worker must still report, not hang, when sending fails
        cfg = dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, method="BAD METHOD"))
        with pytest.raises(WorkerError, match="Method cannot contain"):
            await run_sweep(cfg)
