"""The cache in the query path, in one process: the real QueryProcessor, Registry and Scheduler;
the test plays the model replica by reading the batches the scheduler sends and answering them.
"""

import asyncio

import numpy as np
import pytest

from clipper_core import _cache_c, _cache_py
from clipper_core.config import AppConfig, ModelVersion
from clipper_core.predict import QueryProcessor
from clipper_core.registry import Registry
from clipper_core.scheduler import BatchingConfig, Scheduler
from clipper_core.state import StateStore
from clipper_rpc import protocol as P

REPLICA = b"replica-1"


class Rig:
    def __init__(self, tmp_path, impl):
        self.sent = []
        self.store = StateStore(str(tmp_path))
        self.registry = Registry(self.store)
        self.scheduler = Scheduler(self._send, loop=asyncio.get_running_loop())
        self.cache = impl.PredictionCache(1 << 20)
        self.proc = QueryProcessor(self.registry, self.scheduler, self.cache)
        self.add_version("1")
        for name, enabled in (("app", True), ("nocache", False)):
            self.registry.add_app(AppConfig(name, "doubles", "default", 2_000_000,
                                            cache_enabled=enabled))
            self.registry.link(name, "m")

    def add_version(self, version):
        self.registry.add_model(ModelVersion("m", version, "doubles"))
        self.scheduler.ensure_model(("m", version), "doubles",
                                    BatchingConfig(batch_size=64, batch_wait_s=0.0), 2.0)
        self.scheduler.add_replica(REPLICA + version.encode(),
                                   P.Register("m", version, "doubles", f"inst-{version}"))
        self.scheduler.touch(REPLICA + version.encode())  # its first heartbeat

    def _send(self, identity, frames):
        self.sent.append((identity, P.decode([bytes(memoryview(f)) for f in frames])))
        return True

    def predict(self, inputs, app="app", **kw):
        return asyncio.ensure_future(self.proc.predict(app, inputs, **kw))

    def answer(self, i, fn=lambda x: float(x.sum())):
        identity, batch = self.sent[i]
        self.scheduler.on_result(identity, P.Result(batch.batch_id,
                                                    [fn(x) for x in batch.inputs]))

    @staticmethod
    def key(value, version="1"):
        """The cache key of the one-element doubles input ``[value]``."""
        return _cache_py.key_prefix("m", version, "doubles") + np.array([value]).tobytes()

    def close(self):
        self.store.close()


@pytest.fixture(params=["py", "c"])
async def rig(request, tmp_path):
    r = Rig(tmp_path, {"py": _cache_py, "c": _cache_c}[request.param])
    yield r
    r.close()


async def until(cond, what):
    """Let the event loop run until ``cond()`` (bounded)."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_identical_concurrent_queries_share_one_model_call(rig):
    t1, t2 = rig.predict([[1.0, 2.0]]), rig.predict([[1.0, 2.0]])
    await until(lambda: rig.cache.coalesced == 1, "the second query joins the first")
    assert len(rig.sent) == 1 and len(rig.sent[0][1].inputs) == 1
    rig.answer(0)
    (o1,), (o2,) = await t1, await t2
    assert o1.output == o2.output == 3.0 and not o1.cache_hit and not o2.cache_hit
    assert o1.query_id != o2.query_id
    # a repeat is answered from the cache: no batch is sent
    (o3,) = await rig.predict([[1.0, 2.0]])
    assert o3.output == 3.0 and o3.cache_hit and o3.to_json()["cache_hit"] is True
    assert "cache_hit" not in o1.to_json()
    assert len(rig.sent) == 1
    assert (rig.cache.hits, rig.cache.misses, rig.cache.coalesced) == (1, 2, 1)
    assert rig.cache.in_flight == 0 and rig.cache.entries == 1


async def test_duplicates_in_one_batch_are_computed_once(rig):
    t = rig.predict([[1.0], [2.0], [1.0], [1.0]])
    await until(lambda: rig.sent, "a batch")
    rig.answer(0)  # one batch at a time goes to the replica: [1.0], then [2.0]
    await until(lambda: len(rig.sent) == 2, "the second batch")
    rig.answer(1)
    outs = await t
    assert sorted(float(x[0]) for _, b in rig.sent for x in b.inputs) == [1.0, 2.0]
    assert [o.output for o in outs] == [1.0, 2.0, 1.0, 1.0]
    assert not any(o.default for o in outs)


async def test_a_follower_keeps_the_query_alive_after_the_leader_gives_up(rig):
    busy = rig.predict([[9.0]])  # occupies the replica (one batch in flight)
    await until(lambda: rig.sent, "the first batch")
    leader = rig.predict([[5.0]], timeout_ms=30)
    follower = rig.predict([[5.0]])
    (lo,) = await leader  # its deadline passes while the query is still queued
    assert lo.default and lo.output == "default"
    assert not follower.done() and rig.cache.in_flight == 2
    rig.answer(0)  # the replica frees up: the shared query is still due (the follower's deadline)
    await until(lambda: len(rig.sent) == 2, "the shared query to be dispatched")
    rig.answer(1)
    (fo,) = await follower
    assert fo.output == 5.0 and not fo.default
    assert (await busy)[0].output == 9.0
    (again,) = await rig.predict([[5.0]])
    assert again.cache_hit and again.output == 5.0


async def test_a_query_nobody_waits_for_is_dropped(rig):
    busy = rig.predict([[9.0]])
    await until(lambda: rig.sent, "the first batch")
    t = rig.predict([[7.0]])
    await until(lambda: rig.cache.in_flight == 2, "the second query")
    t.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await t
    assert rig.cache.in_flight == 1
    rig.answer(0)
    await busy
    assert len(rig.sent) == 1, "an abandoned query must not be sent to the model"
    # the same input later is a fresh computation, not a wait on the abandoned one
    t = rig.predict([[7.0]])
    await until(lambda: len(rig.sent) == 2, "a new batch")
    rig.answer(1)
    assert (await t)[0].output == 7.0


async def test_errors_and_defaults_are_not_cached(rig):
    t = rig.predict([[1.0]])
    await until(lambda: rig.sent, "a batch")
    identity, batch = rig.sent[0]
    rig.scheduler.on_error(identity, P.Error(batch.batch_id, "ValueError", "bad"))
    (o,) = await t
    assert o.default and "ValueError" in o.explanation
    assert rig.cache.entries == 0 and rig.cache.in_flight == 0
    (o,) = await rig.predict([[1.0]], timeout_ms=5)  # deadline passes: default
    assert o.default and rig.cache.entries == 0 and rig.cache.in_flight == 0
    rig.answer(1)  # too late: nobody waits for it any more
    t = rig.predict([[1.0]])
    await until(lambda: len(rig.sent) == 3, "the model to be asked again")
    rig.answer(2)
    (o,) = await t
    assert o.output == 1.0 and rig.cache.entries == 1


async def test_cache_disabled_app_neither_caches_nor_coalesces(rig):
    t1, t2 = rig.predict([[4.0]], app="nocache"), rig.predict([[4.0]], app="nocache")
    await until(lambda: rig.sent, "a batch")
    rig.answer(0)
    await until(lambda: len(rig.sent) == 2, "a second model call")
    rig.answer(1)
    assert (await t1)[0].output == (await t2)[0].output == 4.0
    assert rig.cache.entries == 0 and rig.cache.misses == 0


async def test_new_version_is_computed_and_ttl_expires(rig):
    t = rig.predict([[2.0]])
    await until(lambda: rig.sent, "a batch")
    rig.answer(0)
    await t
    assert (await rig.predict([[2.0]]))[0].cache_hit
    rig.add_version("2")  # becomes current
    t = rig.predict([[2.0]])
    await until(lambda: len(rig.sent) == 2, "the new version to be asked")
    assert rig.sent[1][0] == REPLICA + b"2"
    rig.answer(1, lambda x: -1.0)
    assert (await t)[0].output == -1.0
    (pinned,) = await rig.predict([[2.0]], version="1")  # version 1's entry is still there
    assert pinned.cache_hit and pinned.output == 2.0
    # a TTL: an entry older than the app's TTL is recomputed
    rig.registry.update_app("app", cache_ttl_s=0.001)
    await asyncio.sleep(0.01)
    t = rig.predict([[2.0]])
    await until(lambda: len(rig.sent) == 3, "the expired entry to be recomputed")
    rig.answer(2, lambda x: -2.0)
    assert (await t)[0].output == -2.0 and rig.cache.expired == 1


async def test_full_queue_ends_the_flight(rig):
    rig.scheduler.models[("m", "1")].queue.capacity = 1
    busy = rig.predict([[9.0]])
    await until(lambda: rig.sent, "the first batch")
    t = rig.predict([[1.0], [2.0]])
    # [1.0] is queued behind the busy replica, [2.0] finds the queue full
    await until(lambda: rig.cache.in_flight == 2, "the request to be queued")
    rig.answer(0)
    await until(lambda: len(rig.sent) == 2, "the queued query to be dispatched")
    rig.answer(1)
    a, b = await t
    assert a.output == 1.0 and not a.default
    assert b.default and "shed: the queue of model m:1 is full" in b.explanation
    assert rig.cache.in_flight == 0 and rig.cache.entries == 2  # [9.0] and [1.0]
    await busy


async def test_many_identical_queries_one_evaluation(rig):
    tasks = [rig.predict([[3.0]]) for _ in range(50)]
    tasks.append(rig.predict([[3.0]] * 20))  # and a batch of the same input
    await until(lambda: rig.cache.coalesced == 69, "every query to join the first")
    rig.answer(0)
    outs = [o for t in tasks for o in await t]
    assert len(outs) == 70 and all(o.output == 3.0 and not o.default for o in outs)
    assert len(rig.sent) == 1 and len(rig.sent[0][1].inputs) == 1
    assert rig.cache.in_flight == 0


async def test_an_impatient_follower_leaves_the_leader_waiting(rig):
    leader = rig.predict([[6.0]])
    await until(lambda: rig.sent, "the leader's batch")
    (fo,) = await rig.predict([[6.0]], timeout_ms=20)
    assert fo.default and "did not answer" in fo.explanation
    assert not leader.done() and rig.cache.in_flight == 1
    rig.answer(0)
    (lo,) = await leader
    assert lo.output == 6.0 and not lo.default and rig.cache.entries == 1


async def test_a_query_the_scheduler_dropped_is_not_joined(rig):
    busy = rig.predict([[9.0]])
    await until(lambda: rig.sent, "the first batch")
    first = rig.predict([[8.0]])
    await until(lambda: rig.cache.in_flight == 2, "the second query")
    # the scheduler drops an expired query by marking it answered (DeadlineQueue.live_head)
    rig.cache.flight(rig.key(8.0)).query.answered = True
    second = rig.predict([[8.0]])
    await until(lambda: rig.cache.misses == 3, "the third query")
    assert rig.cache.coalesced == 0, "must not wait on a query that will never be computed"
    first.cancel()
    rig.answer(0)
    await until(lambda: len(rig.sent) == 2, "the fresh query to be dispatched")
    rig.answer(1)
    assert (await second)[0].output == 8.0
    await busy


async def test_a_multi_model_app_uses_the_cache_per_model(rig):
    """An ensemble app looks every (model, version, input) up in the cache and coalesces
    identical queries per model; a model whose output is cached is not asked again."""
    rig.registry.add_model(ModelVersion("n", "1", "doubles"))
    rig.scheduler.ensure_model(("n", "1"), "doubles",
                               BatchingConfig(batch_size=64, batch_wait_s=0.0), 2.0)
    rig.scheduler.add_replica(b"replica-n", P.Register("n", "1", "doubles", "inst-n"))
    rig.scheduler.touch(b"replica-n")
    rig.registry.add_app(AppConfig("ens", "doubles", "default", 2_000_000, policy="ensemble"))
    rig.registry.link("ens", "m")
    rig.registry.link("ens", "n")
    t = rig.predict([[1.0]])  # the single-model app caches m's output for [1.0]
    await until(lambda: rig.sent, "m's batch")
    rig.answer(0)
    await t
    t1, t2 = rig.predict([[1.0]], app="ens"), rig.predict([[1.0]], app="ens")
    await until(lambda: rig.cache.coalesced == 1, "the second request to join n's query")
    assert [identity for identity, _ in rig.sent] == [REPLICA + b"1", b"replica-n"]
    rig.answer(1)
    (o1,), (o2,) = await t1, await t2
    for o in (o1, o2):
        assert o.output == 1.0 and not o.default and not o.cache_hit
        assert sorted(o.models) == ["m:1", "n:1"] and o.confidence == 1.0
    (o,) = await rig.predict([[1.0]], app="ens")  # both outputs cached: no model call
    assert o.cache_hit and o.output == 1.0 and sorted(o.models) == ["m:1", "n:1"]
    assert o.to_json()["cache_hit"] is True and len(rig.sent) == 2
    # feedback joins the label with the cached predictions, without a model call
    preds = await rig.proc.predictions_for_feedback(rig.registry.get_app("ens"),
                                                    np.array([1.0]))
    assert preds == {"m": 1.0, "n": 1.0} and len(rig.sent) == 2
