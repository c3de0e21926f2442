"""The prediction cache end to end: a real Clipper, real model containers that count their calls."""

import os
import threading
import time

import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core.testing import ClipperProcess


def counting_model(log_path, gate_path, scale):
    """A model that appends every input it evaluates to ``log_path`` and then, while
    ``gate_path`` is absent, holds its answer (so that a test can line up concurrent queries)."""

    def predict(inputs):
        import os
        import time

        with open(log_path, "a") as f:
            f.write("".join(repr(float(x[0])) + "\n" for x in inputs))
        deadline = time.monotonic() + 20
        while not os.path.exists(gate_path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return [float(x.sum()) * scale for x in inputs]

    return predict


def calls(log_path, x):
    try:
        with open(log_path) as f:
            return sum(1 for line in f if line.strip() == repr(float(x)))
    except FileNotFoundError:
        return 0


def wait_for(cond, what, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def in_thread(fn):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn()))
    t.start()
    return t, box


def test_coalescing_cache_hits_and_new_versions(clipper, unique, tmp_path):
    app, model = unique("cached-app"), unique("counter")
    log, gate = str(tmp_path / "calls.log"), str(tmp_path / "gate")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 10_000_000)
    c.deploy_python_closure(model, 1, "doubles", counting_model(log, gate, 10))
    c.link_model_to_app(app, model)
    x = 4.25
    coalesced0 = c.server_info()["cache"]["coalesced"]

    # two identical queries while the first is being computed: one model call
    t1, r1 = in_thread(lambda: clipper.predict(app, {"input": [x]}))
    wait_for(lambda: calls(log, x) == 1, "the model to receive the first query")
    t2, r2 = in_thread(lambda: clipper.predict(app, {"input": [x]}))
    wait_for(lambda: c.server_info()["cache"]["coalesced"] > coalesced0,
             "the second query to join the first")
    open(gate, "w").close()
    t1.join(30), t2.join(30)
    for status, body in (r1["r"], r2["r"]):
        assert status == 200 and body["default"] is False and body["output"] == 42.5, body
        assert "cache_hit" not in body
    assert r1["r"][1]["query_id"] != r2["r"][1]["query_id"]
    assert calls(log, x) == 1

    # the same query again: answered from the cache, no model call
    status, body = clipper.predict(app, {"input": [x]})
    assert status == 200 and body["output"] == 42.5 and body["cache_hit"] is True
    assert body["default"] is False
    assert calls(log, x) == 1

    # a new version: its first query calls the (new) model
    c.deploy_python_closure(model, 2, "doubles", counting_model(log, gate, 100))
    status, body = clipper.predict(app, {"input": [x]})
    assert status == 200 and body["output"] == 425.0 and "cache_hit" not in body
    assert calls(log, x) == 2
    status, body = clipper.predict(app, {"input": [x]})
    assert body["output"] == 425.0 and body["cache_hit"] is True and calls(log, x) == 2
    # pinning the old version still finds its entry
    status, body = clipper.predict(app, {"input": [x], "version": "1"})
    assert body["output"] == 42.5 and body["cache_hit"] is True and calls(log, x) == 2


def test_cache_can_be_switched_off_per_app(clipper, unique, tmp_path):
    app, model = unique("uncached-app"), unique("counter")
    log, gate = str(tmp_path / "calls.log"), str(tmp_path / "gate")
    open(gate, "w").close()
    c = clipper.conn
    info = c.register_application(app, "doubles", -1.0, 10_000_000, cache_enabled=False)
    assert info["cache_enabled"] is False and info["cache_ttl_s"] is None
    c.deploy_python_closure(model, 1, "doubles", counting_model(log, gate, 1))
    c.link_model_to_app(app, model)
    for n in (1, 2, 3):
        status, body = clipper.predict(app, {"input": [1.5]})
        assert status == 200 and body["output"] == 1.5 and "cache_hit" not in body
        assert calls(log, 1.5) == n


def test_server_runs_the_compiled_cache(clipper):
    info = clipper.conn.server_info()
    assert info["compiled_cache"] is True
    assert info["cache_module"] == "clipper_core._cache_c"
    assert info["cache_file"].endswith(".so")
    assert info["cache"]["capacity_bytes"] == 64 * 1024 * 1024


@pytest.mark.parametrize("ttl,cause", [(0, "positive"), (-1.5, "positive"), ("10", "seconds"),
                                       (True, "seconds")])
def test_bad_cache_ttl_is_a_typed_400(clipper, unique, ttl, cause):
    with pytest.raises(ClipperAdminError) as e:
        clipper.conn.register_application(unique("bad-ttl"), "doubles", 0, cache_ttl_s=ttl)
    assert e.value.status == 400 and "cache_ttl_s" in e.value.cause and cause in e.value.cause


def test_cache_settings_survive_a_restart_and_cache_bytes_is_honoured(tmp_path):
    state = str(tmp_path / "state")
    with ClipperProcess(state, extra_args=("--cache-bytes", "1MiB")) as cp:
        assert cp.conn.server_info()["cache"]["capacity_bytes"] == 1024 * 1024
        cp.conn.register_application("ttl-app", "strings", "?", 100_000, cache_ttl_s=2.5)
        cp.conn.register_application("off-app", "strings", "?", 100_000, cache_enabled=False)
    with ClipperProcess(state) as cp:
        assert cp.conn.server_info()["cache"]["capacity_bytes"] == 64 * 1024 * 1024
        a, b = cp.conn.get_app_info("ttl-app"), cp.conn.get_app_info("off-app")
        assert (a["cache_enabled"], a["cache_ttl_s"]) == (True, 2.5)
        assert (b["cache_enabled"], b["cache_ttl_s"]) == (False, None)
    assert not os.path.exists(os.path.join(state, "endpoints.json"))


def test_bad_cache_bytes_flag_is_refused(tmp_path):
    cp = ClipperProcess(str(tmp_path / "s"), extra_args=("--cache-bytes", "lots"),
                        start_timeout_s=15)
    with pytest.raises(RuntimeError) as e:
        cp.start()
    assert "64MiB" in str(e.value)
    cp.close()
