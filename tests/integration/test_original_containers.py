"""The original Clipper's model containers (protocol v3), run unchanged from
``../shared/reference/clipper-0.4-containers/``, register on ``--legacy-rpc-port`` and serve
single and batched queries of every input type through REST and the Open Inference Protocol.
Their string answers come back as JSON values where they are JSON text, as in the original."""

import base64
import json
import os

import numpy as np
import pytest
import tritonclient.http as th

import original_peer
from clipper_core.admin import pickle_closure
from clipper_core.testing import ClipperProcess, post_json, wait_for

TYPES = ("doubles", "floats", "ints", "bytes", "strings")
#: one query per input type (as the REST API takes it) and what the closure answers
QUERY = {
    "doubles": ([1.5, 2.5], 4.0),
    "floats": ([0.5, 0.25], 0.75),
    "ints": ([1, 2, 3], 6),
    "bytes": (base64.b64encode(b"\x01\x02\x03").decode(), 6),
    "strings": ("hello", {"len": 5, "first": "h"}),
}


def closure(xs):
    """What the original closure container runs; it sends ``str()`` of each answer."""
    out = []
    for x in xs:
        if isinstance(x, bytes):  # strings arrive as UTF-8 bytes in the original container
            out.append(json.dumps({"len": len(x), "first": x[:1].decode()}))
        elif np.asarray(x).dtype.kind in "iu":
            out.append(int(np.sum(x)))
        else:
            out.append(float(np.sum(x)))
    return out


@pytest.fixture(scope="module")
def legacy():
    original_peer.reference_dir()
    c = ClipperProcess(extra_args=("--legacy-rpc-port", "0"))
    c.start()
    procs = []
    try:
        port = int(c.endpoints["legacy_rpc"].rsplit(":", 1)[1])
        model_dir = os.path.join(c.state_dir, "original-closure")
        os.makedirs(model_dir)
        with open(os.path.join(model_dir, "func.pkl"), "wb") as f:
            f.write(pickle_closure(closure))
        conn = c.conn
        for it in TYPES:
            for kind in ("noop", "closure"):
                app = model = f"{kind}-{it}"
                conn.register_application(app, it, "default", 20_000_000)
                conn.register_model(model, "1", it)
                conn.link_model_to_app(app, model)
                procs.append(original_peer.start(kind, model, "1", it, port,
                                                 model_path=model_dir, log_dir=c.state_dir))
        wait_for(lambda: sum(m["connected_replicas"] for m in conn.get_all_models(True))
                 == len(procs), 60, "every original container to register")
        yield c
    finally:
        for p in procs:
            original_peer.stop(p)
        c.close()


def test_legacy_port_is_loopback_and_listed(legacy):
    assert legacy.endpoints["legacy_rpc"].startswith("tcp://127.0.0.1:")
    cs = legacy.conn.get_all_model_replicas(verbose=True)
    assert len([c for c in cs if c["instance_id"].startswith("v3-")]) == 2 * len(TYPES)


@pytest.mark.parametrize("it", TYPES)
def test_rest_single_and_batch(legacy, it):
    x, want = QUERY[it]
    for kind, expect in (("noop", 1.0), ("closure", want)):
        status, body = legacy.predict(f"{kind}-{it}", {"input": x})
        assert status == 200, body
        assert body["default"] is False, body
        assert body["output"] == expect
        status, body = legacy.predict(f"{kind}-{it}", {"input_batch": [x, x, x]})
        assert status == 200, body
        assert [p["output"] for p in body["batch_predictions"]] == [expect] * 3


def _tensor(it, n):
    x, _ = QUERY[it]
    if it in ("bytes", "strings"):
        raw = base64.b64decode(x) if it == "bytes" else x.encode()
        t = th.InferInput("input", [n], "BYTES")
        t.set_data_from_numpy(np.array([raw] * n, dtype=object))
        return t
    dtype = {"doubles": np.float64, "floats": np.float32, "ints": np.int32}[it]
    arr = np.array([x] * n, dtype=dtype)
    t = th.InferInput("input", list(arr.shape), {"doubles": "FP64", "floats": "FP32",
                                                  "ints": "INT32"}[it])
    t.set_data_from_numpy(arr)
    return t


@pytest.mark.parametrize("it", TYPES)
def test_oip_single_and_batch(legacy, it):
    client = th.InferenceServerClient(legacy.query_url.split("//", 1)[1])
    _, want = QUERY[it]
    for n in (1, 4):
        res = client.infer(f"closure-{it}", [_tensor(it, n)])
        assert res.get_response()["parameters"]["default"] is False
        out = res.as_numpy("output")
        if isinstance(want, dict):
            assert [json.loads(v) for v in out] == [want] * n
        else:
            assert out.tolist() == [want] * n
        noop = client.infer(f"noop-{it}", [_tensor(it, n)]).as_numpy("output")
        assert noop.tolist() == [1.0] * n
    meta = client.get_model_metadata(f"closure-{it}")
    assert meta["outputs"][0]["datatype"] == res.get_output("output")["datatype"]


def test_killed_original_container_is_dropped_and_answers_default(legacy):
    conn = legacy.conn
    port = int(legacy.endpoints["legacy_rpc"].rsplit(":", 1)[1])
    # the original client's request body: its default output is JSON text
    status, _ = post_json(legacy.management_url + "/admin/add_app",
                          {"name": "gone", "input_type": "d", "default_output": "-1",
                           "latency_slo_micros": 20_000_000})
    assert status == 200
    conn.register_model("gone", "1", "doubles")
    conn.link_model_to_app("gone", "gone")
    p = original_peer.start("noop", "gone", "1", "doubles", port, log_dir=legacy.state_dir)
    try:
        wait_for(lambda: conn.get_model_info("gone")["connected_replicas"] == 1, 30,
                 "the container to register")
        assert legacy.predict("gone", {"input": [1.0]})[1]["output"] == 1.0
    finally:
        original_peer.stop(p)
    # the frontend's heartbeats (metadata requests) go unanswered: the replica is dropped
    wait_for(lambda: conn.get_model_info("gone")["connected_replicas"] == 0, 30,
             "the dead container to be dropped")
    status, body = legacy.predict("gone", {"input": [2.0], "timeout_ms": 50})
    assert status == 200 and body["default"] is True
    assert body["output"] == -1, "the original's string default is answered as JSON"


def test_original_container_on_the_native_port_gets_a_hint_in_the_log():
    """With CURVE on (the default) an original container cannot even finish its handshake on
    the native port; an operator who turned authentication off is told what to do instead."""
    c = ClipperProcess(extra_args=("--insecure-rpc",)).start()
    try:
        port = int(c.endpoints["rpc"].rsplit(":", 1)[1])
        p = original_peer.start("noop", "noop-doubles", "1", "doubles", port,
                                log_dir=c.state_dir)
        try:
            wait_for(lambda: "looks like an original Clipper container" in c.log(), 30,
                     "the native port to log the hint")
        finally:
            original_peer.stop(p)
        assert "start Clipper with --legacy-rpc-port PORT" in c.log()
    finally:
        c.close()


def test_idle_original_containers_stay_registered(legacy):
    """Idle for longer than the 5 s heartbeat timeout, the original containers answer the
    frontend's metadata requests (one a second) and none is dropped."""
    path = os.path.join(legacy.state_dir, f"original-noop-doubles-1-{os.getpid()}.log")

    def pings():
        with open(path) as f:
            return f.read().count("Sent container metadata!")

    wait_for(lambda: pings() > 7, 30, "the frontend's heartbeats to reach the container")
    models = {m["model_name"]: m for m in legacy.conn.get_all_models(verbose=True)}
    for it in TYPES:
        for kind in ("noop", "closure"):
            assert models[f"{kind}-{it}"]["connected_replicas"] == 1
