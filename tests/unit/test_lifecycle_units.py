"""Lifecycle pieces without processes: the state store, the registry's version rules, the
warm-up probe and draining in the scheduler, the empty-batch probe in the container."""

import asyncio
import json
import sqlite3

import numpy as np
import pytest

from clipper_core.config import AppConfig, ModelVersion
from clipper_core.errors import Conflict, StateStoreError, UnknownVersion
from clipper_core.registry import Registry
from clipper_core.sched import Query
from clipper_core.scheduler import BatchingConfig, Scheduler
from clipper_core.state import StateStore
from clipper_rpc import container
from clipper_rpc import protocol as P


@pytest.fixture
def store(tmp_path):
    s = StateStore(str(tmp_path))
    yield s
    s.close()


def _model(name, version, replicas=1):
    return ModelVersion(name, version, "doubles", runtime={"kind": "closure", "path": "/x"},
                        replicas=replicas)


def test_registry_survives_a_reopen(tmp_path):
    s = StateStore(str(tmp_path))
    reg = Registry(s)
    reg.add_app(AppConfig("app", "doubles", {"d": 1}, 250_000))
    for v in ("1", "2", "10"):
        reg.add_model(_model("m", v), make_current=False)
    reg.update_model(("m", "1"), replicas=3)  # an update keeps the version order
    reg.set_current_version("m", "2")
    reg.link("app", "m")
    s.put_replica("m-1-0-abc", {"instance_id": "m-1-0-abc", "pid": 42})
    s.close()
    s = StateStore(str(tmp_path))
    again = Registry(s)
    assert again.apps == reg.apps and again.links == {"app": ["m"]}
    assert again.current == {"m": "2"}
    assert again.versions("m") == ["1", "2", "10"]
    assert again.models[("m", "1")].replicas == 3
    assert s.replicas() == [{"instance_id": "m-1-0-abc", "pid": 42}]
    s.delete_replica("m-1-0-abc")
    assert s.replicas() == []
    s.close()


def test_version_deletion_rules(store):
    reg = Registry(store)
    reg.add_app(AppConfig("app", "doubles"))
    reg.add_model(_model("m", "1"))
    reg.add_model(_model("m", "2"), make_current=False)
    reg.link("app", "m")
    with pytest.raises(Conflict, match="make another version current"):
        reg.delete_version("m", "1")
    reg.delete_version("m", "2")
    with pytest.raises(UnknownVersion, match="versions: 1"):
        reg.get_model("m", "2")
    with pytest.raises(Conflict, match="unlink it"):
        reg.delete_version("m", "1")
    reg.unlink("app", "m")
    reg.delete_version("m", "1")
    assert "m" not in reg.current and not reg.models
    assert store.current_versions() == {}
    # force (undoing a failed first deploy) also drops the links
    reg.add_model(_model("n", "1"))
    reg.link("app", "n")
    reg.delete_version("n", "1", force=True)
    assert reg.links["app"] == [] and store.links() == []


def test_app_updates_are_validated(store):
    reg = Registry(store)
    reg.add_app(AppConfig("app", "doubles", 0.0, 100_000))
    assert reg.update_app("app", slo_micros=5_000, default_output=None).slo_micros == 5_000
    with pytest.raises(Exception, match="latency_slo_micros"):
        reg.update_app("app", slo_micros=0)
    with pytest.raises(Exception, match="cannot change"):
        reg.update_app("app", input_type="ints")
    assert reg.get_app("app").slo_micros == 5_000


@pytest.mark.parametrize("data", ["{not json", json.dumps([1, 2]),
                                  json.dumps({"name": "Bad Name", "input_type": "doubles",
                                              "latency_slo_micros": 100000})])
def test_invalid_records_name_the_file_and_the_way_out(tmp_path, data):
    s = StateStore(str(tmp_path))
    s.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("INSERT INTO apps VALUES ('x', ?)", (data,))
    db.commit()
    db.close()
    s = StateStore(str(tmp_path))
    with pytest.raises(StateStoreError) as e:
        Registry(s)
    s.close()
    assert "state.db is corrupted" in e.value.cause and "aside" in e.value.cause


def test_garbage_state_file(tmp_path):
    (tmp_path / "state.db").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StateStoreError, match="corrupted or not a Clipper state database"):
        StateStore(str(tmp_path))


class Wire:
    """A fake RPC transport: records what the scheduler sends."""

    def __init__(self):
        self.sent = []

    def __call__(self, identity, frames):
        self.sent.append((identity, P.decode([bytes(memoryview(f)) for f in frames])))
        return True


def _sched(n_replicas=1):
    wire = Wire()
    s = Scheduler(wire, loop=asyncio.get_running_loop())
    s.ensure_model(("m", "1"), "doubles", BatchingConfig(batch_size=4), 1.0)
    reps = [s.add_replica(f"id{i}".encode(), P.Register("m", "1", "doubles", f"r{i}", 100 + i))
            for i in range(n_replicas)]
    for r in reps:
        s.touch(r.identity)  # the first heartbeat puts a registered replica in rotation
    return s, wire, reps


async def test_probe_resolves_on_answer_error_loss_and_timeout():
    s, wire, (r,) = _sched()
    fut = s.probe(r, [], 5.0)
    ident, msg = wire.sent[-1]
    assert ident == b"id0" and isinstance(msg, P.PredictBatch) and msg.inputs == []
    assert s.on_result(b"id0", P.Result(msg.batch_id, [], 0))
    assert await fut == (True, [])
    assert not r.in_flight

    fut = s.probe(r, [np.array([1.0])], 5.0)
    msg = wire.sent[-1][1]
    assert s.on_error(b"id0", P.Error(msg.batch_id, "ValueError", "bad input"))
    ok, why = await fut
    assert not ok and "ValueError: bad input" in why
    assert r.errors == 0  # a failed warm-up is not a serving error

    fut = s.probe(r, [], 0.01)
    ok, why = await fut
    assert not ok and "did not answer the warm-up call in time" in why
    assert not r.suspect and not r.in_flight

    fut = s.probe(r, [], 5.0)
    s.remove_replica("r0", "process exited")
    ok, why = await fut
    assert not ok and "process exited" in why


async def test_a_draining_replica_gets_no_batch_whatever_it_answers():
    s, wire, (a, b) = _sched(2)
    a.draining = True
    loop = asyncio.get_running_loop()
    now = loop.time()
    queries = [Query(i, np.array([1.0]), now, now + 1.0, loop.create_future()) for i in range(8)]
    for q in queries[:4]:
        s.submit(("m", "1"), q)
    s.touch(b"id0")  # a heartbeat must not undo the drain
    for q in queries[4:]:
        s.submit(("m", "1"), q)
    batches = [(i, m) for i, m in wire.sent if isinstance(m, P.PredictBatch)]
    assert batches and all(i == b"id1" for i, _ in batches)
    assert s.models[("m", "1")].healthy_replicas() == 1
    for _, m in batches:
        s.on_result(b"id1", P.Result(m.batch_id, [0.0] * len(m.inputs)))
    assert all(i == b"id1" for i, m in wire.sent if isinstance(m, P.PredictBatch))
    assert a.draining


def test_empty_batch_is_answered_without_calling_the_model():
    calls = []

    class Recorder(container.Model):
        def predict(self, inputs):
            calls.append(inputs)
            return [0] * len(inputs)

    for input_type in P.INPUT_TYPES:
        frames = P.encode(P.PredictBatch(7, input_type, []))
        msg = P.decode([bytes(memoryview(f)) for f in frames])
        assert msg.inputs == []
        out = P.decode(container._evaluate(Recorder(), msg))
        assert out == P.Result(7, [], 0)
    assert calls == []


def test_delayed_batching_survives_a_timer_uvloop_rounds_into_the_past():
    """uvloop's call_at returns a plain Handle (no when()) for a time it rounds into the
    past; the scheduler must not ask that handle for its time (it answered 500s under load)."""
    import uvloop

    async def main():
        s, wire, (r,) = _sched()
        mq = s.models[("m", "1")]
        s.configure(("m", "1"), mq.cfg.replace(batch_wait_s=0.0005))  # under 1 ms (uvloop)
        loop = asyncio.get_running_loop()
        for i in range(3):
            now = loop.time()
            s.submit(("m", "1"), Query(i, np.array([1.0]), now, now + 1.0,
                                       loop.create_future()))
        s._arm_wait(mq, loop.time() - 1.0)  # a time in the past: a plain Handle
        s._arm_wait(mq, loop.time() + 1.0)
        await asyncio.sleep(0.01)
        assert [m for _, m in wire.sent if isinstance(m, P.PredictBatch)]

    uvloop.run(main())


def test_a_container_queues_nothing_while_no_frontend_is_connected():
    """Sends never block and nothing piles up for a frontend that is away (a backlog would
    fill the high-water mark and then block the container, SIGTERM included)."""
    import socket

    from clipper_rpc.transport import DealerChannel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    chan = DealerChannel(f"tcp://127.0.0.1:{port}")
    try:
        hb = P.encode(P.Heartbeat())
        assert not any(chan.try_send(hb) for _ in range(5000))
    finally:
        chan.close()


async def test_drain_is_a_future_the_scheduler_resolves():
    s, wire, (a, b) = _sched(2)
    assert s.drain("nobody") is None
    loop = asyncio.get_running_loop()
    now = loop.time()

    def ask(qid):
        q = Query(qid, np.array([1.0]), now, now + 1.0, loop.create_future())
        s.submit(("m", "1"), q)
        return q

    q0 = ask(0)  # a lone query in an otherwise empty system goes out at once
    batch_to = {i: m for i, m in wire.sent if isinstance(m, P.PredictBatch)}
    assert len(batch_to) == 1
    busy = a if b"id0" in batch_to else b
    idle = b if busy is a else a
    assert s.drain(idle.instance_id).done()  # owes nothing: drained at once
    fut = s.drain(busy.instance_id)
    assert not fut.done() and busy.draining
    m = batch_to[busy.identity]
    s.on_result(busy.identity, P.Result(m.batch_id, [0.0] * len(m.inputs)))
    assert fut.done() and await fut
    assert await q0.future == (True, 0.0)
    # a replica removed while it drains resolves the future too
    idle.draining = False
    ask(1)
    assert wire.sent[-1][0] == idle.identity  # the only replica not draining took it
    fut2 = s.drain(idle.instance_id)
    assert not fut2.done()
    s.remove_replica(idle.instance_id, "stopped")
    assert fut2.done()
    assert s.knows(busy.identity) and not s.knows(idle.identity)
