"""Bad input from a container: garbage on the RPC socket never crashes the frontend."""

import os

import msgpack
import zmq

from clipper_rpc import protocol as P
from clipper_rpc.auth import Credentials


def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


def test_garbage_on_the_rpc_socket_is_dropped_and_serving_goes_on(clipper, unique):
    app, model = unique("garbage-app"), unique("garbage")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 1_000_000, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", add_one)
    c.link_model_to_app(app, model)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # an authenticated peer that sends garbage (an unauthenticated one never gets through)
    Credentials.load(clipper.rpc_credentials).apply(sock)
    sock.connect(clipper.endpoints["rpc"])
    try:
        garbage = [
            [b""], [os.urandom(64)], [b"\xc1"],  # empty, random, a reserved msgpack byte
            [msgpack.packb({"v": 99, "t": 3})],  # a protocol version nobody speaks
            [msgpack.packb({"v": 1, "t": 5, "batch": 1, "n": 1}), msgpack.packb([1, 2])],
            [msgpack.packb({"v": 1, "t": 1, "model": model, "version": "1",
                            "input_type": "strings", "instance": "impostor"})],
            [msgpack.packb({"v": 1, "t": 4}), b"", b""],  # a frontend-only message
            [msgpack.packb({"v": 1, "t": 5, "batch": 123456, "n": 0}), msgpack.packb([])],
            [msgpack.packb([1, 2, 3])], [b"x" * 70_000],
        ]
        for frames in garbage * 20:
            sock.send_multipart(frames)
        # an unknown peer that heartbeats is told to register again (RESET)
        sock.send_multipart(P.encode(P.Heartbeat()))
        assert sock.poll(5000), "no answer to a heartbeat from an unknown peer"
        replies = []
        while sock.poll(200):
            replies.append(P.decode(sock.recv_multipart()))
        assert P.Reset() in replies
    finally:
        sock.close()
    status, body = clipper.predict(app, {"input": [41.0]})
    assert status == 200 and body["default"] is False and body["output"] == 42.0
    (rep,) = [r for r in c.get_all_model_replicas(verbose=True) if r["model_name"] == model]
    assert rep["healthy"] and rep["connected"], "the impostor did not displace the replica"
    assert "dropped a malformed message" in clipper.log()
