"""End to end: a real Clipper process, real model container processes, real sockets."""

import base64
import http.client
import json
import os
import signal
import time
import urllib.parse

import pytest

from clipper_core.testing import post_json, wait_for as _wait


def describe(inputs):
    """Echo model: tells back what the container received, per input."""
    import numpy as np

    out = []
    for x in inputs:
        if isinstance(x, np.ndarray):
            out.append({"dtype": str(x.dtype), "values": x.tolist()})
        elif isinstance(x, bytes):
            out.append({"type": "bytes", "hex": x.hex()})
        else:
            out.append({"type": type(x).__name__, "reversed": x[::-1]})
    return out


CASES = {
    "ints": ([[1, 2, 3], [-7], [2**31 - 1, 0]], "int32",
             lambda x: {"dtype": "int32", "values": x}),
    "floats": ([[1.5, 2.25], [0.0], [-3.0, 4.0, 5.5]], "float32",
               lambda x: {"dtype": "float32", "values": x}),
    "doubles": ([[0.1, 0.2, 0.3], [1e300], [-2.5]], "float64",
                lambda x: {"dtype": "float64", "values": x}),
    "bytes": ([base64.b64encode(b"\x00\x01hello").decode(), base64.b64encode(b"").decode(),
               base64.b64encode(bytes(range(256))).decode()], None,
              lambda x: {"type": "bytes", "hex": base64.b64decode(x).hex()}),
    "strings": (["hello", "", "ünïcødé ✓"], None,
                lambda x: {"type": "str", "reversed": x[::-1]}),
}


@pytest.fixture(scope="module")
def typed_apps(clipper):
    conn = clipper.conn
    apps = {}
    for input_type in CASES:
        name = f"echo-{input_type}"
        conn.register_application(name, input_type, "none", 2_000_000)
        conn.deploy_python_closure(name, 1, input_type, describe)
        conn.link_model_to_app(name, name)
        apps[input_type] = name
    return apps


@pytest.mark.parametrize("input_type", list(CASES))
def test_single_predict_every_input_type(clipper, typed_apps, input_type):
    inputs, _, expect = CASES[input_type]
    for x in inputs:
        status, body = clipper.predict(typed_apps[input_type], {"input": x})
        assert status == 200, body
        assert body["default"] is False, body
        assert body["output"] == expect(x)
        assert isinstance(body["query_id"], int)
        assert "default_explanation" not in body


@pytest.mark.parametrize("input_type", list(CASES))
def test_batch_predict_preserves_order(clipper, typed_apps, input_type):
    inputs, _, expect = CASES[input_type]
    batch = (inputs * 7)[:20]
    status, body = clipper.predict(typed_apps[input_type], {"input_batch": batch})
    assert status == 200, body
    preds = body["batch_predictions"]
    assert [p["output"] for p in preds] == [expect(x) for x in batch]
    assert all(p["default"] is False for p in preds)
    assert len({p["query_id"] for p in preds}) == len(batch)


def test_batch_of_one_is_a_list(clipper, typed_apps):
    status, body = clipper.predict(typed_apps["doubles"], {"input_batch": [[1.0]]})
    assert status == 200
    assert isinstance(body["batch_predictions"], list) and len(body["batch_predictions"]) == 1


def test_unlinked_app_answers_default(clipper, unique):
    app = unique("lonely")
    clipper.conn.register_application(app, "doubles", {"label": "unknown"}, 100_000)
    status, body = clipper.predict(app, {"input": [1.0]})
    assert status == 200
    assert body["default"] is True
    assert body["output"] == {"label": "unknown"}
    assert "no model is linked" in body["default_explanation"]


def sleepy(inputs):
    import time

    time.sleep(0.4)
    return [1.0 for _ in inputs]


def _timed_predict(conn, path, body):
    t0 = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    return resp.status, data, time.perf_counter() - t0


def test_slo_miss_answers_default_on_time(clipper, unique):
    app, model = unique("slow-app"), unique("sleepy")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 100_000)
    c.deploy_python_closure(model, 1, "doubles", sleepy)
    c.link_model_to_app(app, model)
    u = urllib.parse.urlparse(clipper.query_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        worst = 0.0
        for _ in range(5):
            status, body, elapsed = _timed_predict(conn, f"/{app}/predict", {"input": [1.0]})
            assert status == 200
            assert body["default"] is True and body["output"] == -1.0
            # the model misses the deadline, or its busy replica is suspect, or the query's
            # deadline passes in the queue: each explanation says which
            why = body["default_explanation"]
            assert model in why or "deadline" in why, why
            worst = max(worst, elapsed)
        # the SLO is 100 ms; the stated slack is 50 ms
        assert worst <= 0.150, f"a default answer took {worst * 1000:.0f} ms (SLO 100 ms + 50 ms)"
        # a shorter per-request timeout is honoured too
        status, body, elapsed = _timed_predict(conn, f"/{app}/predict",
                                               {"input": [1.0], "timeout_ms": 20})
        assert body["default"] is True and elapsed <= 0.070
    finally:
        conn.close()


def picky(inputs):
    out = []
    for x in inputs:
        if x[0] < 0:
            raise ValueError("negative inputs are not supported by this model")
        out.append(float(x[0]))
    return out


def test_model_that_raises_gives_default_and_keeps_serving(clipper, unique):
    app, model = unique("picky-app"), unique("picky")
    c = clipper.conn
    c.register_application(app, "doubles", 0.0, 2_000_000)
    c.deploy_python_closure(model, 1, "doubles", picky)
    c.link_model_to_app(app, model)
    status, body = clipper.predict(app, {"input": [-1.0]})
    assert status == 200 and body["default"] is True and body["output"] == 0.0
    assert "ValueError" in body["default_explanation"]
    assert "negative inputs" in body["default_explanation"]
    status, body = clipper.predict(app, {"input": [3.0]})
    assert status == 200 and body == {**body, "default": False, "output": 3.0}
    # the remote traceback is logged once, by the frontend
    log = clipper.log()
    assert "Traceback" in log and "negative inputs are not supported" in log


def _replicas(conn, model):
    return [r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == model]



def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


def test_killed_container_is_restarted_and_serves_again(clipper, unique):
    app, model = unique("phoenix-app"), unique("phoenix")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 1_000_000)
    c.deploy_python_closure(model, 1, "doubles", add_one)
    c.link_model_to_app(app, model)
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 2.0
    (rep,) = _replicas(c, model)
    old_pid = rep["pid"]
    os.kill(old_pid, signal.SIGKILL)
    new = _wait(lambda: [r for r in _replicas(c, model)
                         if r["pid"] != old_pid and r["healthy"] and r["connected"]],
                what="the replica to be restarted and to register again")
    assert new[0]["restarts"] >= 1
    status, body = clipper.predict(app, {"input": [41.0]})
    assert status == 200 and body["default"] is False and body["output"] == 42.0


@pytest.mark.parametrize("raw,status,code,cause", [
    (b"{not json", 400, "malformed_json", "not valid JSON"),
    (b"", 400, "malformed_json", "empty"),
    (b"[1, 2]", 400, "bad_request", "JSON object"),
    (b'{"inptu": [1.0]}', 400, "missing_field", "'input'"),
    (b'{"input": "abc"}', 400, "invalid_input", "list of numbers"),
    (b'{"input": [1.0, "x"]}', 400, "invalid_input", "string"),
    (b'{"input": []}', 400, "invalid_input", "non-empty"),
    (b'{"input_batch": []}', 400, "invalid_input", "non-empty"),
    (b'{"input_batch": [[1.0], "x"]}', 400, "invalid_input", "list of numbers"),
    (b'{"input": [1.0], "timeout_ms": -5}', 400, "invalid_input", "timeout_ms"),
])
def test_bad_input_gets_typed_4xx(clipper, typed_apps, raw, status, code, cause):
    got_status, body = post_json(f"{clipper.query_url}/{typed_apps['doubles']}/predict", None,
                                 raw=raw)
    assert got_status == status, body
    assert body["error"] == code
    assert cause in body["cause"]


def test_wrong_types_name_what_was_expected(clipper, typed_apps):
    for input_type, bad, expected in [("ints", [1.5], "integers"), ("bytes", "%%%", "base64"),
                                      ("strings", [1], "a string")]:
        status, body = clipper.predict(typed_apps[input_type], {"input": bad})
        assert status == 400 and body["error"] == "invalid_input"
        assert expected in body["cause"] and f"input_type {input_type}" in body["cause"]


def test_unknown_app_is_404(clipper):
    status, body = clipper.predict("no-such-app", {"input": [1.0]})
    assert status == 404 and body["error"] == "unknown_application"
    assert "no-such-app" in body["cause"]


def test_oversize_body_is_413_and_server_survives(clipper, typed_apps):
    raw = b'{"input": [' + b"1.0," * (3 * 1024 * 1024) + b'1.0]}'  # ~12 MiB > 10 MiB limit
    status, body = post_json(f"{clipper.query_url}/{typed_apps['doubles']}/predict", None,
                             raw=raw)
    assert status == 413 and body["error"] == "payload_too_large"
    status, body = clipper.predict(typed_apps["doubles"], {"input": [2.0]})
    assert status == 200 and body["default"] is False


def test_server_runs_the_scheduler_the_run_names(clipper):
    # compiled, or the pure twin in the CLIPPER_PUREPYTHON=1 run of the suite
    pure = os.environ.get("CLIPPER_PUREPYTHON", "") not in ("", "0")
    info = clipper.conn.server_info()
    assert info["compiled_scheduler"] is (not pure)
    assert info["scheduler_module"] == f"clipper_core._sched_{'py' if pure else 'c'}"
    assert info["scheduler_file"].endswith(".py" if pure else ".so")
