"""The legacy RPC endpoint with a real scheduler and a real ZeroMQ peer that speaks v3 through
the codec (what the original container sends, frame for frame): registration waits for the
model, the warm-up probe's empty batch never reaches the container, heartbeats become
metadata requests, answers are read as JSON text, garbage is counted and dropped."""

import asyncio

import numpy as np
import pytest
import zmq

from clipper_core.legacy_rpc import LegacyRpcServer
from clipper_core.scheduler import BatchingConfig, Scheduler
from clipper_core.sched import Query
from clipper_rpc import legacy_protocol as L
from clipper_rpc import protocol as P


class Peer:
    """A DEALER speaking v3 as the original container does."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, msg) -> None:
        self.sock.send_multipart(L.encode(msg))

    async def recv(self, timeout_s: float = 5.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                return L.decode_from_frontend(self.sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                await asyncio.sleep(0.005)
        raise AssertionError("the peer heard nothing from the endpoint")

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
async def rig():
    loop = asyncio.get_running_loop()
    legacy = LegacyRpcServer("tcp://127.0.0.1:0", retry_interval_s=0.05)
    native = []
    send = legacy.route(lambda ident, frames: native.append(ident) or True)
    sched = Scheduler(send, loop=loop)
    endpoint = legacy.start(sched)
    peer = Peer(endpoint)
    yield legacy, sched, peer, native
    peer.close()
    await legacy.close()


async def _until(cond, timeout_s=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_registers_once_its_model_exists_and_serves(rig):
    legacy, sched, peer, native = rig
    peer.send(L.ContainerHeartbeat())
    assert await peer.recv() == L.Heartbeat(L.HeartbeatType.REQUEST_CONTAINER_METADATA)
    peer.send(L.ContainerMetadata("m", "1", "doubles"))
    await asyncio.sleep(0.1)
    assert not sched.replicas()
    [p] = legacy.peers()
    assert not p["registered"] and "no model m:1" in p["waiting_because"]

    key = ("m", "1")
    sched.ensure_model(key, "doubles", BatchingConfig(batch_size=4), 1.0)
    await _until(lambda: sched.replicas())  # the housekeeping retried
    r = sched.replicas()[0]
    assert r.instance_id.startswith("v3-") and r.info == {"protocol": 3}

    # the warm-up probe's empty batch is answered without the container
    ok, outs = await sched.probe(r, [], 1.0)
    assert ok and outs == []

    loop = asyncio.get_running_loop()
    futs = []
    for x in ([1.0, 2.0], [3.0]):
        f = loop.create_future()
        q = Query(len(futs) + 1, np.array(x), loop.time(), loop.time() + 5, f)
        assert sched.submit(key, q)
        futs.append(f)
    got = []
    while sum(len(m.inputs) for m in got) < 2:
        m = await peer.recv()
        if isinstance(m, L.PredictRequest):
            got.append(m)
            peer.send(L.PredictResponse(m.msg_id, ['{"n": %d}' % len(x) if len(x) == 2
                                                   else "not json" for x in m.inputs]))
    assert [list(x) for m in got for x in m.inputs] == [[1.0, 2.0], [3.0]]
    assert [await f for f in futs] == [(True, {"n": 2}), (True, "not json")]

    # the frontend's heartbeat reaches it as a metadata request; its metadata is the pong
    sched_send = legacy.route(lambda *a: False)
    assert sched_send(r.identity, P.encode(P.Heartbeat()))
    while (m := await peer.recv()) != L.Heartbeat(L.HeartbeatType.REQUEST_CONTAINER_METADATA):
        pass
    before = r.last_seen
    await asyncio.sleep(0.01)
    peer.send(L.ContainerMetadata("m", "1", "doubles"))
    await _until(lambda: r.last_seen > before)
    assert sched.replicas() == [r], "a pong is not a second registration"
    assert native == [], "nothing went to the native port"


async def test_wrong_input_type_waits_and_garbage_is_dropped(rig):
    legacy, sched, peer, native = rig
    sched.ensure_model(("m", "1"), "ints", BatchingConfig(), 1.0)
    peer.send(L.ContainerHeartbeat())
    await peer.recv()
    peer.send(L.ContainerMetadata("m", "1", "doubles"))
    await _until(lambda: legacy.peers() and legacy.peers()[0]["waiting_because"])
    assert "it takes doubles" in legacy.peers()[0]["waiting_because"]
    assert not sched.replicas()
    peer.sock.send_multipart([b"", b"\x07\x00\x00\x00"])
    peer.sock.send_multipart([b"junk"])
    await _until(lambda: legacy.protocol_errors == 2)
    # an answer to nothing it was asked is dropped, and the endpoint keeps serving
    peer.send(L.PredictResponse(99, ["1"]))
    peer.send(L.ContainerHeartbeat())
    assert await peer.recv() == L.Heartbeat(L.HeartbeatType.REQUEST_CONTAINER_METADATA)
