"""The prediction cache end to end: a real Clipper, real model containers that count their calls."""

import os
import threading

import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core import testing
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
    return testing.wait_for(cond, timeout_s, what)


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


def test_feedback_takes_the_cached_predictions(clipper, unique, tmp_path):
    """/update for an input just predicted joins the label with the predictions the cache
    holds: no model is called again.  An input never predicted is computed once per model, and
    what feedback computed answers later queries from the cache.  A multi-model (exp4) app
    looks every (model, version, input) up in the cache too."""
    gate = str(tmp_path / "gate")
    open(gate, "w").close()
    c = clipper.conn
    models, logs = [], {}
    for scale in (1, 3):
        m = unique(f"fb-counter{scale}")
        logs[m] = str(tmp_path / f"{m}.log")
        c.deploy_python_closure(m, 1, "doubles", counting_model(logs[m], gate, scale))
        models.append(m)
    single, ens = unique("fb-single"), unique("fb-exp4")
    c.register_application(single, "doubles", -1.0, 10_000_000)
    c.link_model_to_app(single, models[0])
    c.register_application(ens, "doubles", -1.0, 10_000_000, policy="exp4",
                           policy_params={"loss": "squared", "loss_scale": 10.0})
    for m in models:
        c.link_model_to_app(ens, m)
    labels = sorted(f"{m}:1" for m in models)

    def counts(x):
        return [calls(logs[m], x) for m in models]

    x = 2.5
    status, body = clipper.predict(ens, {"input": [x]})
    assert status == 200 and body["default"] is False and "cache_hit" not in body, body
    assert sorted(body["models"]) == labels and counts(x) == [1, 1]
    status, body = clipper.predict(ens, {"input": [x]})
    assert status == 200 and body["cache_hit"] is True and sorted(body["models"]) == labels
    assert counts(x) == [1, 1]

    # feedback for that input: both models' predictions (2.5 and 7.5) come from the cache
    status, body = clipper.update(ens, {"input": [x], "label": 2.5})
    assert status == 200 and body["missing"] == [], body
    assert body["losses"] == {models[0]: pytest.approx(0.0), models[1]: pytest.approx(0.25)}
    assert counts(x) == [1, 1], "feedback must not call a model whose prediction is cached"
    # another app linked to the same model version shares its entry
    status, body = clipper.update(single, {"input": [x], "label": 2.5})
    assert status == 200 and body["losses"] == {models[0]: 0.0}, body
    assert counts(x) == [1, 1]

    # feedback for an input nobody asked about: computed once per model, then cached
    y = 6.0
    status, body = clipper.update(ens, {"input": [y], "label": 6.0})
    assert status == 200 and body["missing"] == [], body
    assert counts(y) == [1, 1]
    status, body = clipper.predict(ens, {"input": [y]})
    assert status == 200 and body["cache_hit"] is True and counts(y) == [1, 1], body
    status, body = clipper.predict(single, {"input": [y]})
    assert body["output"] == 6.0 and body["cache_hit"] is True and counts(y) == [1, 1]


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


def test_server_runs_the_cache_the_run_names(clipper):
    # compiled, or the pure twin in the CLIPPER_PUREPYTHON=1 run of the suite
    pure = os.environ.get("CLIPPER_PUREPYTHON", "") not in ("", "0")
    info = clipper.conn.server_info()
    assert info["compiled_cache"] is (not pure)
    assert info["cache_module"] == f"clipper_core._cache_{'py' if pure else 'c'}"
    assert info["cache_file"].endswith(".py" if pure else ".so")
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
