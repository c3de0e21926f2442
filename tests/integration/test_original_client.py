"""The real ``clipper_admin`` 0.4.1 from the package registry, unchanged, drives a running
Clipper: a small ``ContainerManager`` subclass points it at Clipper's ports and starts the
original model containers (``../shared/reference/clipper-0.4-containers/``) on the legacy
RPC port where the original would have started Docker containers."""

import json
import logging
import os

import pytest
import requests

import original_peer
from clipper_core.admin import pickle_closure
from clipper_core.testing import ClipperProcess, wait_for

NOOP = "clipper/noop-container:0.4.1"
CLOSURE = "clipper/python-closure-container:0.4.1"
JSON = {"Content-type": "application/json"}


def double_first(xs):
    return [x[0] * 2 for x in xs]


@pytest.fixture(scope="module")
def original():
    original_peer.reference_dir()
    import clipper_admin as cl  # the test extra and `make build` install it

    c = ClipperProcess(extra_args=("--legacy-rpc-port", "0"))
    c.start()
    model_dir = os.path.join(c.state_dir, "closure")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "func.pkl"), "wb") as f:
        f.write(pickle_closure(double_first))
    cm = original_peer.container_manager(c, {NOOP: ("noop", None),
                                             CLOSURE: ("closure", model_dir)})
    conn = cl.ClipperConnection(cm)
    logging.getLogger("clipper_admin").setLevel(logging.WARNING)
    try:
        conn.start_clipper()  # checks /metrics and /admin/ping as the original did
        yield cl, conn, c, cm
    finally:
        cm.stop_all()
        c.close()


def _replicas(conn, name, version, n):
    wait_for(lambda: conn.get_model_info(name, version)["connected_replicas"] == n, 60,
             f"{n} replica(s) of {name}:{version} to register")


def test_registration_and_lookups(original):
    cl, conn, c, cm = original
    conn.register_application("ints-app", "integers", "-1", 20_000_000)
    assert conn.get_app_info("ints-app")["input_type"] == "ints"
    for alias, canonical in (("int", "ints"), ("i", "ints"), ("double", "doubles"),
                             ("d", "doubles"), ("str", "strings"), ("float", "floats")):
        conn.register_application(f"alias-{alias}", alias, "x", 100_000)
        assert conn.get_app_info(f"alias-{alias}")["input_type"] == canonical
    assert "ints-app" in conn.get_all_apps()
    assert any(a["name"] == "ints-app" for a in conn.get_all_apps(verbose=True))
    assert conn.get_app_info("no-such-app") is None
    assert conn.get_model_info("no-such-model", "1") is None
    assert conn.get_linked_models("ints-app") == []
    with pytest.raises(cl.ClipperException) as e:
        conn.link_model_to_app("ints-app", "not-deployed")
    assert "No model with name" in str(e.value)

    conn.register_model("ext", "v1", "integers")
    conn.register_model("ext", "v2", "i")
    info = conn.get_model_info("ext", "v1")
    assert info["input_type"] == "ints" and info["container_name"] == "NO_CONTAINER"
    assert info["model_data_path"] == "DEPRECATED"
    conn.set_model_version("ext", "v1")
    assert conn.get_current_model_version("ext") == "v1"
    with pytest.raises(cl.ClipperException) as e:
        conn.set_num_replicas("ext", 2, "v1")
    assert "containerless model" in str(e.value)
    conn.link_model_to_app("ints-app", "ext")
    assert conn.get_linked_models("ints-app") == ["ext"]
    conn.unlink_model_from_app("ints-app", "ext")
    conn.unregister_application("ints-app")
    assert conn.get_app_info("ints-app") is None

    metrics = conn.inspect_instance()  # a plain GET of /metrics, read as JSON
    assert isinstance(metrics, dict) and len(metrics) >= 1
    assert conn.get_query_addr() == cm.get_query_addr()
    assert conn.get_clipper_logs(os.path.join(c.state_dir, "logs-out"))


def test_deploy_query_scale_and_inspect_replicas(original):
    cl, conn, c, cm = original
    conn.register_application("noop-app", "doubles", "DEFAULT", 20_000_000)
    conn.deploy_model("noop-model", "1", "doubles", NOOP, num_replicas=1)
    conn.link_model_to_app("noop-app", "noop-model")
    _replicas(conn, "noop-model", "1", 1)
    url = f"http://{conn.get_query_addr()}/noop-app/predict"
    r = requests.post(url, headers=JSON, data=json.dumps({"input": [1.0, 2.0]})).json()
    assert r["output"] == 1.0 and r["default"] is False

    conn.set_num_replicas("noop-model", 3)  # version: the current one
    assert conn.get_num_replicas("noop-model", "1") == 3
    _replicas(conn, "noop-model", "1", 3)
    reps = [r for r in conn.get_all_model_replicas(verbose=True)
            if r["model_name"] == "noop-model"]
    assert sorted(r["model_replica_id"] for r in reps) == [0, 1, 2]
    assert {r["model_id"] for r in reps} == {"noop-model:1"}
    assert {r["input_type"] for r in reps} == {"doubles"}
    one = conn.get_model_replica_info("noop-model", "1", 1)
    assert one["model_replica_id"] == 1 and one["model_name"] == "noop-model"
    assert conn.get_model_replica_info("noop-model", "1", 7) is None

    conn.set_num_replicas("noop-model", 1, "1")
    assert conn.get_num_replicas("noop-model", "1") == 1
    _replicas(conn, "noop-model", "1", 1)


def test_closure_versions_rollback_and_stop(original):
    cl, conn, c, cm = original
    conn.register_application("dbl", "doubles", "-1.0", 20_000_000)
    conn.deploy_model("dbl", 1, "doubles", NOOP)
    conn.link_model_to_app("dbl", "dbl")
    conn.deploy_model("dbl", 2, "doubles", CLOSURE, num_replicas=1)
    assert conn.get_current_model_version("dbl") == "2"
    _replicas(conn, "dbl", "2", 1)
    url = f"http://{conn.get_query_addr()}/dbl/predict"
    r = requests.post(url, headers=JSON, data=json.dumps({"input": [21.0]})).json()
    assert r["output"] == 42.0, r
    conn.set_model_version("dbl", 1)
    _replicas(conn, "dbl", "1", 1)
    r = requests.post(url, headers=JSON, data=json.dumps({"input": [22.0]})).json()
    assert r["output"] == 1.0, r
    conn.stop_inactive_model_versions(["dbl"])
    assert cm.get_num_replicas("dbl", "2") == 0
    assert [m["model_version"] for m in conn.get_all_models(verbose=True)
            if m["model_name"] == "dbl"] == ["1"]
    conn.unlink_model_from_app("dbl", "dbl")
    conn.stop_models(["dbl"])
    assert cm.get_num_replicas("dbl", "1") == 0
    assert "dbl:1" not in conn.get_all_models()
