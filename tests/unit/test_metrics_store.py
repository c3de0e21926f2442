"""The metrics store with a real query processor and scheduler in this process: outcomes,
shedding, per-batch histograms and both views (Prometheus text and /stats JSON)."""

import asyncio

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipper_rpc import protocol as P

from clipper_core.config import AppConfig, ModelVersion
from clipper_core.errors import Overloaded
from clipper_core.metrics import Histogram, Metrics
from clipper_core.predict import QueryProcessor
from clipper_core.registry import Registry
from clipper_core.sched import Query
from clipper_core.scheduler import BatchingConfig, Scheduler
from clipper_core.state import StateStore


@pytest.fixture
async def setup(tmp_path):
    store = StateStore(str(tmp_path))
    reg = Registry(store)
    sched = Scheduler(lambda identity, frames: True, queue_capacity=1,
                      loop=asyncio.get_running_loop())
    proc = QueryProcessor(reg, sched)
    metrics = Metrics(proc)
    reg.add_model(ModelVersion("m", "1", "doubles", replicas=0))
    for name, default in (("with-default", -1.0), ("no-default", None)):
        reg.add_app(AppConfig(name, "doubles", default, 1_000_000))
        reg.link(name, "m")
    sched.ensure_model(("m", "1"), "doubles", BatchingConfig(), 1.0)
    yield proc, metrics
    store.close()


def parse(metrics):
    text, ctype = metrics.exposition(None)
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_shed_and_default_outcomes(setup):
    proc, metrics = setup
    # the model has no replica and its queue holds one query: the first waits for its
    # deadline (default), the second is refused at once (shed)
    outs = await metrics.track("with-default", 2,
                               proc.predict("with-default", [[1.0], [2.0]], timeout_ms=30))
    assert [(o.default, o.shed) for o in outs] == [(True, False), (True, True)]
    assert "shed: the queue of model m:1 is full" in outs[1].explanation
    # with the queue full, an app without a default gets 503 Overloaded: counted as shed
    blocker = asyncio.ensure_future(metrics.track(
        "with-default", 1, proc.predict("with-default", [[3.0]], timeout_ms=30)))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await metrics.track("no-default", 1, proc.predict("no-default", [[4.0]]))
    await blocker
    f, g = metrics.apps["with-default"], metrics.apps["no-default"]
    assert (f.prediction, f.default, f.shed, f.error) == (0, 2, 1, 0)
    assert (g.prediction, g.default, g.shed, g.error) == (0, 0, 1, 0)
    s = parse(metrics)
    assert s[("clipper_queries_total", (("app", "with-default"), ("outcome", "shed")))] == 1
    assert s[("clipper_queries_total", (("app", "no-default"), ("outcome", "shed")))] == 1
    assert s[("clipper_query_latency_seconds_count", (("app", "with-default"),))] == 3
    assert s[("clipper_model_shed_total", (("model", "m"), ("version", "1")))] == 2
    assert s[("clipper_replicas_up", (("model", "m"), ("version", "1")))] == 0
    st = metrics.stats()
    assert st["apps"]["no-default"]["shed"] == 1
    assert st["models"]["m:1"]["shed"] == 2 and st["models"]["m:1"]["replicas"] == 0


async def test_batch_hook_feeds_histograms(setup):
    proc, metrics = setup
    mq = proc.scheduler.models[("m", "1")]
    # the scheduler sums queue delay per query as a batch leaves; the hook turns what
    # accrued since the last batch into observations at their mean
    mq.stats["queue_delay_s"].add(0.006, 3)
    proc.scheduler.on_batch_done(mq, 3, 0.004, 0.003)
    mq.stats["queue_delay_s"].add(0.2, 1)
    proc.scheduler.on_batch_done(mq, 1, 0.02, 0.01)
    h = metrics.models[("m", "1")].hists
    assert (h["queue_delay_s"].count, h["queue_delay_s"].sum) == (4, pytest.approx(0.206))
    assert h["batch_size"].count == 2 and h["batch_size"].sum == 4
    s = parse(metrics)
    lbl = (("le", "0.0025"), ("model", "m"), ("version", "1"))
    assert s[("clipper_queue_delay_seconds_bucket", lbl)] == 3
    lbl = (("le", "0.25"), ("model", "m"), ("version", "1"))
    assert s[("clipper_queue_delay_seconds_bucket", lbl)] == 4
    assert s[("clipper_batch_size_bucket", (("le", "1.0"), ("model", "m"),
                                            ("version", "1")))] == 1


def test_histogram_buckets_are_le_and_cumulative():
    h = Histogram((0.1, 1.0))
    h.observe(0.1)  # on the bound: counts in le="0.1"
    h.observe(0.5, 3)
    h.observe(7.0)
    assert h.cumulative() == [("0.1", 1), ("1.0", 4), ("+Inf", 5)]
    assert (h.count, h.sum) == (5, pytest.approx(8.6))


async def test_cache_stats_hook(setup):
    proc, metrics = setup
    metrics.cache_stats = lambda: {"entries": 3, "bytes": 120, "bad name": 1, "x": "no"}
    s = parse(metrics)
    assert s[("clipper_cache_entries", ())] == 3 and s[("clipper_cache_bytes", ())] == 120
    assert metrics.stats()["cache"] == {"entries": 3, "bytes": 120}


async def test_deleted_apps_and_models_are_forgotten(setup):
    proc, metrics = setup
    await metrics.track("with-default", 1, proc.predict("with-default", [[1.0]], timeout_ms=5))
    proc.scheduler.on_batch_done(proc.scheduler.models[("m", "1")], 1, 0.001, 0.001)
    proc.registry.delete_app("with-default")
    proc.scheduler.remove_model(("m", "1"))
    s = metrics.stats()
    assert "with-default" not in s["apps"] and s["models"] == {}
    assert not any(dict(k[1]).get("app") == "with-default" for k in parse(metrics))
    assert metrics.models == {}


async def test_batch_wait_is_recorded_per_batch(tmp_path):
    """Delayed batching holds a partial batch back; the time it held it is batch wait."""
    loop = asyncio.get_running_loop()
    sent = []
    sched = Scheduler(lambda identity, frames: sent.append(frames) or True, loop=loop)
    mq = sched.ensure_model(("m", "1"), "doubles",
                            BatchingConfig(batch_size=2, batch_wait_s=0.02, max_in_flight=1),
                            1.0)
    sched.add_replica(b"r1", P.Register("m", "1", "doubles", "r1"))
    sched.touch(b"r1")  # its first heartbeat puts it in rotation

    def query(i):
        now = loop.time()
        return Query(i, np.ones(1), now, now + 1.0, loop.create_future())

    def batch_id(frames):
        return P.decode([bytes(memoryview(f)) for f in frames]).batch_id

    sched.submit(("m", "1"), query(1))  # the only query in the system: it goes at once
    assert len(sent) == 1
    assert mq.stats["batch_wait_s"].count == 1 and mq.stats["batch_wait_s"].sum == 0.0
    sched.submit(("m", "1"), query(2))  # waits for the replica (one batch at a time)
    assert len(sent) == 1
    sched.on_result(b"r1", P.Result(batch_id(sent[0]), [1.0]))
    # query 1's user was just answered and may ask again: half a batch is held, <= 20 ms
    assert len(sent) == 1
    deadline = loop.time() + 5.0
    while len(sent) == 1 and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert len(sent) == 2
    held = mq.stats["batch_wait_s"].sum
    assert mq.stats["batch_wait_s"].count == 2 and held >= 0.019
    # the replica is busy with that batch; once it answers, a full batch goes out at once
    sched.submit(("m", "1"), query(3))
    sched.submit(("m", "1"), query(4))
    sched.on_result(b"r1", P.Result(batch_id(sent[1]), [1.0]))
    assert len(sent) == 3
    assert mq.stats["batch_wait_s"].count == 3 and mq.stats["batch_wait_s"].sum == held
