"""The original Clipper's integration tests' REST scenarios (``clipper_admin_tests.py``,
``many_apps_many_models.py``), replayed against Clipper with the original client, the
original containers and plain ``requests`` calls to the REST API, as those tests made them.
Waits poll for the replicas the original tests slept for."""

import json
import logging
import os
import time

import numpy as np
import pytest
import requests

import original_peer
from clipper_core.admin import pickle_closure
from clipper_core.testing import ClipperProcess, wait_for

NOOP = "clipper/noop-container:0.4.1"
HEADERS = {"Content-type": "application/json"}
DEFAULT = "DEFAULT"


def slow(xs):
    time.sleep(0.3)
    return ["slow" for _ in xs]


def batch_size(xs):
    time.sleep(0.05)
    return [str(len(xs)) for _ in xs]


def length(xs):
    return [str(len(x)) for x in xs]


@pytest.fixture(scope="module")
def env():
    original_peer.reference_dir()
    import clipper_admin as cl

    c = ClipperProcess(extra_args=("--legacy-rpc-port", "0"))
    c.start()
    images = {NOOP: ("noop", None)}
    for fn in (slow, batch_size, length):
        d = os.path.join(c.state_dir, f"closure-{fn.__name__}")
        os.makedirs(d)
        with open(os.path.join(d, "func.pkl"), "wb") as f:
            f.write(pickle_closure(fn))
        images[f"closure:{fn.__name__}"] = ("closure", d)
    cm = original_peer.container_manager(c, images)
    conn = cl.ClipperConnection(cm)
    logging.getLogger("clipper_admin").setLevel(logging.WARNING)
    conn.connect()
    try:
        yield conn, cm
    finally:
        cm.stop_all()
        c.close()


def predict(conn, app, body):
    r = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", headers=HEADERS,
                      data=json.dumps(body), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def serving(conn, name, version, n=1):
    wait_for(lambda: (conn.get_model_info(name, version) or {}).get("connected_replicas") == n,
             60, f"{n} replica(s) of {name}:{version}")


def test_many_apps_many_models(env):
    """Each app: registered with a default, answered before any model; then model versions
    deployed one after another, the first linked; each version answers (few defaults)."""
    conn, cm = env
    for a in range(3):
        app, model = f"testapp{a}-app", f"testapp{a}-model"
        conn.register_application(app, "doubles", "default_pred", 100000)
        first = predict(conn, app, {"input": list(np.random.random(30))})
        assert first["default"] is True and first["output"] == "default_pred"
        for version in range(2):
            conn.deploy_model(model, version, "doubles", NOOP, num_replicas=1)
            if version == 0:
                conn.link_model_to_app(app, model)
            serving(conn, model, str(version))
            defaults = sum(predict(conn, app, {"input": list(np.random.random(30))})["default"]
                           for _ in range(25))
            assert defaults < 25 / 2
            assert conn.get_current_model_version(model) == str(version)
    assert len([m for m in conn.get_all_models() if m.startswith("testapp")]) == 6


def test_unlinked_app_returns_default_and_batch_queries(env):
    conn, cm = env
    conn.register_application("app4", "doubles", DEFAULT, 30000)
    r = predict(conn, "app4", {"input": [99.3, 18.9, 67.2, 34.2]})
    assert r["output"] == DEFAULT and r["default"] is True

    conn.register_application("app5", "doubles", DEFAULT, 30_000_000)
    conn.deploy_model("m5", 1, "doubles", NOOP)
    conn.link_model_to_app("app5", "m5")
    serving(conn, "m5", "1")
    r = predict(conn, "app5", {"input": [99.3, 18.9, 67.2, 34.2]})
    assert r["output"] != DEFAULT and r["default"] is False
    batch = [[99.3, 18.9, 67.2, 34.2], [101.1, 45.6, 98.0, 99.1], [12.3, 6.7, 42.1, 12.6],
             [9.01, 87.6, 70.2, 19.6]]
    r = predict(conn, "app5", {"input_batch": batch})
    assert len(r["batch_predictions"]) == len(batch)
    assert all(p["output"] == 1.0 and not p["default"] for p in r["batch_predictions"])
    # the original accepted a trailing slash
    r = requests.post(f"http://{conn.get_query_addr()}/app5/predict/", headers=HEADERS,
                      data=json.dumps({"input": [1.0]}), timeout=30)
    assert r.status_code == 200 and r.json()["output"] == 1.0


def test_closure_answers_and_pinned_version_errors(env):
    conn, cm = env
    conn.register_application("app3", "doubles", DEFAULT, 30_000_000)
    conn.deploy_model("m4", 1, "doubles", "closure:length")
    conn.link_model_to_app("app3", "m4")
    serving(conn, "m4", "1")
    r = predict(conn, "app3", {"input": [101.1, 99.5, 107.2]})
    assert int(r["output"]) == 3 and r["output"] == 3  # "3" from the container, as JSON
    r = requests.post(f"http://{conn.get_query_addr()}/app3/predict", headers=HEADERS,
                      data=json.dumps({"input": [1.0], "version": "7"}), timeout=30)
    assert r.status_code == 400
    assert "Requested version: 7 does not exist for model: m4" in r.json()["cause"]


def test_slo_miss_answers_default(env):
    conn, cm = env
    conn.register_application("slo-app", "doubles", DEFAULT, 30000)  # 30 ms
    conn.deploy_model("slow", 1, "doubles", "closure:slow")
    conn.link_model_to_app("slo-app", "slow")
    serving(conn, "slow", "1")
    t0 = time.monotonic()
    r = predict(conn, "slo-app", {"input": [1.0, 2.0]})
    assert r["default"] is True and r["output"] == DEFAULT and r["default_explanation"]
    assert time.monotonic() - t0 < 0.3, "answered at the SLO, not when the model finished"


def test_fixed_batch_size_is_used_when_saturated(env):
    conn, cm = env
    conn.register_application("app6", "doubles", DEFAULT, 30_000_000)
    conn.deploy_model("m7", 1, "doubles", "closure:batch_size", batch_size=4)
    conn.link_model_to_app("app6", "m7")
    serving(conn, "m7", "1")
    queries = [[float(x) + j * .001 for x in range(5)] for j in range(40)]
    r = predict(conn, "app6", {"input_batch": queries})
    sizes = [p["output"] for p in r["batch_predictions"]]
    assert max(sizes) == 4, sizes
    assert sum(1 for s in sizes if s == 4) >= int(len(queries) * .7)


def test_set_model_version_rollback_and_replicas_to_zero_and_back(env):
    conn, cm = env
    conn.register_application("roll", "doubles", DEFAULT, 30_000_000)
    conn.deploy_model("roll", "a", "doubles", NOOP)
    conn.link_model_to_app("roll", "roll")
    conn.deploy_model("roll", "b", "doubles", "closure:length")
    serving(conn, "roll", "b")
    assert predict(conn, "roll", {"input": [1.0, 2.0]})["output"] == 2
    conn.set_model_version("roll", "a")  # rollback
    serving(conn, "roll", "a")
    assert predict(conn, "roll", {"input": [1.0, 2.0, 3.0]})["output"] == 1.0
    conn.set_model_version("roll", "b", num_replicas=2)  # forward again, scaled
    serving(conn, "roll", "b", 2)
    assert predict(conn, "roll", {"input": [4.0, 5.0, 6.0]})["output"] == 3

    conn.set_num_replicas("roll", 0)
    serving(conn, "roll", "b", 0)
    r = predict(conn, "roll", {"input": [7.0], "timeout_ms": 300})
    assert r["default"] is True and r["output"] == DEFAULT
    conn.set_num_replicas("roll", 1)
    serving(conn, "roll", "b", 1)
    r = predict(conn, "roll", {"input": [8.0]})
    assert r["default"] is False and r["output"] == 1
