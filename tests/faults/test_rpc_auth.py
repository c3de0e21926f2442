"""The RPC port authenticates replicas (CURVE): nothing that cannot prove it was started for
Clipper answers a query, and a live replica cannot be displaced by its instance id."""

import os
import subprocess
import sys
import threading

import zmq

from clipper_core.testing import wait_for
from clipper_rpc import protocol as P
from clipper_rpc import serve
from clipper_rpc.auth import Credentials


def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


def _setup(clipper, unique, prefix):
    app, model = unique(f"{prefix}-app"), unique(prefix)
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 1_000_000, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", add_one)
    c.link_model_to_app(app, model)
    return app, model


def _dealer(clipper, creds=None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if creds is not None:
        creds.apply(sock)
    sock.connect(clipper.endpoints["rpc"])
    return sock


def _drain(sock, wait_ms=200):
    got = []
    while sock.poll(wait_ms):
        got.append(P.decode(sock.recv_multipart()))
    return got


def _all_correct(clipper, app, n=40):
    for i in range(n):
        status, body = clipper.predict(app, {"input": [float(i)]})
        assert status == 200 and body["default"] is False, body
        assert body["output"] == i + 1.0, f"query {i} was answered by an impostor: {body}"


def test_a_dealer_without_credentials_gets_no_query(clipper, unique):
    app, model = _setup(clipper, unique, "auth")
    imp = _dealer(clipper)  # no credentials: the CURVE handshake never completes
    try:
        for _ in range(5):
            imp.send_multipart(P.encode(P.Register(model, "1", "doubles", "impostor", 1)),
                               flags=zmq.NOBLOCK)
        _all_correct(clipper, app)
        assert _drain(imp) == [], "an unauthenticated peer heard from the frontend"
    finally:
        imp.close()
    reps = [r for r in clipper.conn.get_all_model_replicas(verbose=True)
            if r["model_name"] == model]
    assert [r["instance_id"] for r in reps if r["instance_id"] == "impostor"] == []


def test_wrong_keys_and_a_live_instance_id_are_refused(clipper, unique):
    app, model = _setup(clipper, unique, "authid")
    creds = Credentials.load(clipper.rpc_credentials)
    (live,) = [r for r in clipper.conn.get_all_model_replicas(verbose=True)
               if r["model_name"] == model]
    # a key pair the frontend never issued, even with the right server key
    pub, sec = zmq.curve_keypair()
    stranger = _dealer(clipper, Credentials(creds.server_public, pub, sec))
    # valid credentials, but the instance id of a connected replica
    thief = _dealer(clipper, creds)
    # valid credentials, a new instance id, and then silence: never put in rotation
    silent = _dealer(clipper, creds)
    try:
        reg = P.encode(P.Register(model, "1", "doubles", live["instance_id"], 1))
        stranger.send_multipart(reg, flags=zmq.NOBLOCK)
        thief.send_multipart(reg)
        silent.send_multipart(P.encode(P.Register(model, "1", "doubles", "silent-one", 1)))
        wait_for(lambda: any(r["instance_id"] == "silent-one"
                             for r in clipper.conn.get_all_model_replicas(verbose=True)),
                 10, "the silent replica's registration")
        _all_correct(clipper, app)
        assert _drain(stranger) == []
        thief_got = _drain(thief)
        assert not any(isinstance(m, (P.Registered, P.PredictBatch)) for m in thief_got), \
            thief_got
        silent_got = _drain(silent)
        assert P.Registered in [type(m) for m in silent_got]
        assert not any(isinstance(m, P.PredictBatch) for m in silent_got), \
            "a replica that never answered was given a batch"
    finally:
        for s in (stranger, thief, silent):
            s.close()
    (rep,) = [r for r in clipper.conn.get_all_model_replicas(verbose=True)
              if r["instance_id"] == live["instance_id"]]
    assert rep["connected"] and rep["healthy"], "the live replica was displaced"
    assert "from another peer while that replica is connected" in clipper.log()


def test_an_external_replica_joins_with_the_credentials_file(clipper, unique):
    app, model = unique("ext-app"), unique("ext")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 1_000_000, cache_enabled=False)
    c.register_model(model, 1, "doubles")
    c.link_model_to_app(app, model)
    assert os.stat(clipper.rpc_credentials).st_mode & 0o077 == 0, "credentials readable by others"
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(add_one,), daemon=True, kwargs=dict(
        model_name=model, model_version="1", input_type="doubles",
        address=clipper.endpoints["rpc"], credentials=clipper.rpc_credentials, stop=stop))
    t.start()
    try:
        wait_for(lambda: c.get_model_info(model)["healthy_replicas"] == 1, 20,
                 "the external replica")
        _all_correct(clipper, app, 10)
        # deleting the version tells its external replica to stop (no re-register loop)
        c.unlink_model_from_app(app, model)
        c.delete_versioned_model(model, 1)
        t.join(15)
        assert not t.is_alive(), "the replica of a deleted version was not told to stop"
    finally:
        stop.set()
        t.join(5)


def test_unauthenticated_rpc_only_on_loopback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", str(tmp_path),
                        "start", "--insecure-rpc", "--rpc-host", "0.0.0.0", "--rpc-port", "0",
                        "--query-port", "0", "--mgmt-port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs authentication" in r.stderr, r.stderr
