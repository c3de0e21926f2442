"""Model lifecycle with real processes: versions, warm-up, rollback and scaling under a steady
load, the management routes that change apps and models, concurrent management calls."""

import http.client
import json
import os
import queue
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core.testing import (ClipperProcess, post_json, process_alive,
                                  remove_docker_containers, remove_swarm_services,
                                  wait_for as _wait)


@pytest.fixture(scope="module", params=["local", "docker", "swarm"])
def clipper(request):
    """The lifecycle suite runs on each replica backend: a Clipper of this module's own."""
    if request.param in ("docker", "swarm"):
        request.getfixturevalue(request.param if request.param == "swarm" else "docker_image")
    c = ClipperProcess(extra_args=("--backend", request.param))
    c.start()
    try:
        yield c
    finally:
        c.stop()
        left = []
        if request.param == "docker":
            left = remove_docker_containers(c.state_dir)
        if request.param == "swarm":
            left = remove_swarm_services(c.state_dir)
        c.close()
        assert not left, f"a clean stop left {request.param} replicas: {left}"


def answers_one(inputs):
    return [1 for _ in inputs]


def answers_two(inputs):
    return [2 for _ in inputs]


def answers_two_slowly(inputs):
    import time

    time.sleep(0.01)  # a batch is in flight for a while: scale-down must drain it
    return [2 for _ in inputs]


class SlowToLoad:
    """A model whose replica takes ``delay`` s to load (unpickling sleeps), answering 3."""

    def __init__(self, delay):
        self.delay = delay

    def __getstate__(self):
        return {"delay": self.delay}

    def __setstate__(self, state):
        import time

        time.sleep(state["delay"])
        self.delay = state["delay"]

    def __call__(self, inputs):
        return [3 for _ in inputs]


class CannotLoad:
    """A model whose replica cannot start: unpickling it raises."""

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        raise RuntimeError("missing weights file")

    def __call__(self, inputs):
        return [0 for _ in inputs]


def raises_on_warmup(inputs):
    raise ValueError("this model cannot answer anything")





class SteadyLoad:
    """Queries at a steady rate: a pacer thread issues one ticket every 1/rate s and worker
    threads, each with its own keep-alive connection, send one query per ticket (a queue of
    tickets builds up if the server is slow, so the rate does not follow the answers).
    ``results`` holds one (sent, done, status, body) per query, times on
    ``time.monotonic()``."""

    def __init__(self, url, body, rate=200.0, workers=16):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path
        self.payload = json.dumps(body)
        self.rate = rate
        self.results = []
        self._tickets = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pace, daemon=True)] + [
            threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "the load did not finish"

    def _pace(self):
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            i += 1
            self._tickets.put(i)
        for _ in self._threads[1:]:
            self._tickets.put(None)

    def _work(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            while self._tickets.get() is not None:
                sent = time.monotonic()
                try:
                    conn.request("POST", self.path, self.payload,
                                 {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    status, body = resp.status, json.loads(resp.read())
                except Exception as e:  # counted as a failed query
                    conn.close()
                    status, body = -1, repr(e)
                self.results.append((sent, time.monotonic(), status, body))
        finally:
            conn.close()

    def check_all_answered(self):
        """Every query got HTTP 200 with a prediction (no error, no default output)."""
        assert self.results, "no query was sent"
        bad = [r for r in self.results if r[2] != 200 or r[3].get("default") is not False]
        assert not bad, f"{len(bad)} of {len(self.results)} queries failed or got the " \
                        f"default output, e.g. {bad[:3]}"


def retire(conn, model):
    """Stop every replica of ``model`` (the session's Clipper is shared by many tests)."""
    for m in conn.get_all_models(verbose=True):
        if m["model_name"] == model and m["num_replicas"]:
            conn.set_num_replicas(model, 0, m["model_version"])


@pytest.fixture
def versioned(clipper, unique):
    """An app whose model has v1 (answers 1) and v2 (answers 2, current)."""
    app, model = unique("ver-app"), unique("ver")
    c = clipper.conn
    c.register_application(app, "doubles", -1, 2_000_000)
    c.deploy_python_closure(model, 1, "doubles", answers_one)
    c.link_model_to_app(app, model)
    c.deploy_python_closure(model, 2, "doubles", answers_two)
    yield app, model
    retire(c, model)


def test_versions_plain_pinned_and_unknown(clipper, versioned):
    app, model = versioned
    status, body = clipper.predict(app, {"input": [1.0]})
    assert status == 200 and body["output"] == 2 and body["default"] is False
    for v in ("1", 1):
        status, body = clipper.predict(app, {"input": [1.0], "version": v})
        assert status == 200 and body["output"] == 1 and body["default"] is False
    status, body = clipper.predict(app, {"input_batch": [[1.0], [2.0]], "version": "2"})
    assert [p["output"] for p in body["batch_predictions"]] == [2, 2]
    status, body = clipper.predict(app, {"input": [1.0], "version": "9"})
    assert status == 400 and body["error"] == "unknown_version"
    assert model in body["cause"] and "version: 9 " in body["cause"] and "1, 2" in body["cause"]
    status, body = clipper.predict(app, {"input": [1.0], "version": [1]})
    assert status == 400 and "'version' must be a string" in body["cause"]
    info = clipper.conn.get_model_info(model, 2)
    assert info["is_current_version"] is True and info["connected_replicas"] == 1


def test_new_version_is_current_only_after_warm_up(clipper, versioned):
    app, model = versioned
    c = clipper.conn
    load_s = 1.5
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        deploying = pool.submit(c.deploy_python_closure, model, 3, "doubles",
                                SlowToLoad(load_s), warmup_input=[0.5])
        answers = []
        while not deploying.done():
            status, body = clipper.predict(app, {"input": [1.0]})
            assert status == 200 and body["default"] is False, body
            answers.append((time.monotonic(), body["output"]))
            time.sleep(0.02)
        mv = deploying.result()
    assert time.monotonic() - t0 >= load_s, "the deploy returned before its replica loaded"
    # while v3 loads, v2 answers; then v3, and never v2 again
    loading = [out for t, out in answers if t < t0 + load_s]
    assert len(loading) >= 5 and set(loading) == {2}
    outs = [out for _, out in answers]
    assert outs == sorted(outs)
    assert mv["model_version"] == "3"
    status, body = clipper.predict(app, {"input": [1.0]})
    assert body["output"] == 3 and body["default"] is False


def test_failed_warm_up_changes_nothing(clipper, versioned):
    app, model = versioned
    c = clipper.conn
    with pytest.raises(ClipperAdminError) as e:
        c.deploy_python_closure(model, 3, "doubles", raises_on_warmup, warmup_input=[1.0])
    assert e.value.status == 502 and e.value.code == "model_error"
    assert "warm-up" in e.value.cause and "this model cannot answer anything" in e.value.cause
    assert f"{model}:3" not in c.get_all_models()
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 2
    _wait(lambda: not [r for r in c.get_all_model_replicas(verbose=True)
                       if r["model_name"] == model and r["model_version"] == "3"],
          what="the failed version's replica to stop")
    # the version can be deployed again, properly this time
    c.deploy_python_closure(model, 3, "doubles", answers_one, warmup_input=[1.0])
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 1


def test_deploy_whose_replica_never_registers_changes_nothing(clipper, versioned):
    app, model = versioned
    c = clipper.conn
    with pytest.raises(ClipperAdminError) as e:
        c.deploy_python_closure(model, 3, "doubles", CannotLoad(), ready_timeout_s=2)
    assert e.value.status == 400
    assert "no replica registered within 2 s" in e.value.cause and "logs" in e.value.cause
    assert f"{model}:3" not in c.get_all_models()
    assert not [r for r in c.get_all_model_replicas(verbose=True)
                if r["model_name"] == model and r["model_version"] == "3"]
    assert not os.path.exists(os.path.join(clipper.state_dir, "models", model, "3"))
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 2


def test_deploy_validation(clipper, unique):
    c = clipper.conn
    model = unique("valid")
    cases = [
        (dict(name="Bad_Name", version=1), "DNS-1123"),
        (dict(name=model, version="bad version"), "model version"),
        (dict(name=model, version=1, input_type="tensors"), "input_type must be one of"),
        (dict(name=model, version=1, num_replicas=0), "num_replicas must be an integer 1..256"),
        (dict(name=model, version=1, num_replicas=1000), "num_replicas"),
        (dict(name=model, version=1, batch_size=0), "batch_size"),
        (dict(name=model, version=1, warmup_input="text"), "'warmup_input' is not a valid"),
    ]
    for kw, expected in cases:
        kw = {"input_type": "doubles", **kw}
        with pytest.raises(ClipperAdminError) as e:
            c.deploy_python_closure(kw.pop("name"), kw.pop("version"), kw.pop("input_type"),
                                    answers_one, **kw)
        assert e.value.status == 400 and expected in e.value.cause, (kw, e.value.cause)
    url = f"{clipper.management_url}/admin/deploy_python_closure"
    for body, expected in [
        ({"model_name": model, "model_version": "1", "input_type": "doubles",
          "closure": "%%%"}, "base64"),
        ({"model_name": model, "model_version": "1", "input_type": "doubles",
          "closure": "", }, "empty"),
        ({"model_name": model, "model_version": "1", "input_type": "doubles",
          "closure": "AA==", "num_replicas": "2"}, "num_replicas"),
        ({"model_name": model, "model_version": "1", "input_type": "doubles",
          "closure": "AA==", "labels": [1]}, "labels"),
    ]:
        status, err = post_json(url, body)
        assert status == 400 and expected in err["cause"], (body, err)
    assert all(not m.startswith(f"{model}:") for m in c.get_all_models())
    # the same version twice is a conflict, and does not touch the running one
    c.deploy_python_closure(model, 1, "doubles", answers_one)
    with pytest.raises(ClipperAdminError) as e:
        c.deploy_python_closure(model, 1, "doubles", answers_two)
    assert e.value.status == 409 and "already exists" in e.value.cause
    with pytest.raises(ClipperAdminError) as e:
        c.deploy_python_closure(model, 2, "ints", answers_two)
    assert e.value.status == 400 and "input_type doubles" in e.value.cause


def test_rollback_under_steady_load_loses_nothing(clipper, versioned):
    app, model = versioned
    with SteadyLoad(f"{clipper.query_url}/{app}/predict", {"input": [1.0]}) as load:
        _wait(lambda: len(load.results) >= 200, what="a second of load before the rollback")
        t_start = time.monotonic()
        clipper.conn.set_model_version(model, 1)
        t_done = time.monotonic()
        sent_after = len(load.results)
        _wait(lambda: len(load.results) >= sent_after + 200, what="a second of load after it")
    load.check_all_answered()
    before = [r[3]["output"] for r in load.results if r[1] < t_start]
    after = [r[3]["output"] for r in load.results if r[0] > t_done]
    assert before and set(before) == {2}
    assert after and set(after) == {1}, "queries sent after the rollback returned got v2"
    assert clipper.conn.get_model_info(model)["model_version"] == "1"


def _replicas(conn, model):
    return [r for r in conn.get_all_model_replicas(verbose=True) if r["model_name"] == model]


def test_scale_up_and_down_under_steady_load_loses_nothing(clipper, unique):
    app, model = unique("scale-app"), unique("scale")
    c = clipper.conn
    c.register_application(app, "doubles", -1, 2_000_000)
    c.deploy_python_closure(model, 1, "doubles", answers_two_slowly)
    c.link_model_to_app(app, model)
    with SteadyLoad(f"{clipper.query_url}/{app}/predict", {"input": [1.0]}) as load:
        _wait(lambda: len(load.results) >= 100, what="load before scaling")
        assert c.set_num_replicas(model, 3)["num_replicas"] == 3
        _wait(lambda: len([r for r in _replicas(c, model) if r["connected"]
                           and r["healthy"]]) == 3, what="three connected replicas")
        n = len(load.results)
        _wait(lambda: len(load.results) >= n + 200, what="load on three replicas")
        three = {r["instance_id"]: r["pid"] for r in _replicas(c, model)}
        assert c.set_num_replicas(model, 1)["num_replicas"] == 1
        n = len(load.results)
        _wait(lambda: len(load.results) >= n + 200, what="load after scaling down")
    load.check_all_answered()
    assert {r[3]["output"] for r in load.results} == {2}
    left = _replicas(c, model)
    assert len(left) == 1 and left[0]["connected"]
    gone = [pid for iid, pid in three.items() if iid != left[0]["instance_id"]]
    assert len(gone) == 2
    _wait(lambda: not any(process_alive(p) for p in gone), what="scaled-down replicas to exit")
    drained = [line for line in clipper.log().splitlines() if "draining replica" in line
               and any(iid in line for iid in three)]
    assert len(drained) == 2, drained
    assert c.get_model_info(model)["num_replicas"] == 1
    retire(c, model)


def test_scale_validation(clipper, versioned):
    _, model = versioned
    url = f"{clipper.management_url}/admin/set_num_replicas"
    for body, status, expected in [
        ({"model_name": model, "num_replicas": -1}, 400, "0..256"),
        ({"model_name": model, "num_replicas": 257}, 400, "0..256"),
        ({"model_name": model, "num_replicas": True}, 400, "must be int"),
        ({"model_name": model, "num_replicas": "2"}, 400, "must be int"),
        ({"model_name": model}, 400, "num_replicas"),
        ({"model_name": "No", "num_replicas": 1}, 400, "DNS-1123"),
        ({"model_name": "nope-no-such", "num_replicas": 1}, 404, "No model with name"),
        ({"model_name": model, "model_version": "7", "num_replicas": 1}, 400, "versions: 1, 2"),
    ]:
        got, err = post_json(url, body)
        assert got == status and expected in err["cause"], (body, err)


def test_update_unregister_and_unlink(clipper, unique):
    c = clipper.conn
    app, model = unique("upd-app"), unique("upd")
    c.register_application(app, "doubles", "old default", 1_000_000)
    updated = c.update_application(app, slo_micros=250_000, default_output={"new": True})
    assert updated["latency_slo_micros"] == 250_000 and updated["default_output"] == {"new": True}
    info = c.get_app_info(app)
    assert info["latency_slo_micros"] == 250_000
    status, body = clipper.predict(app, {"input": [1.0]})  # no model yet: the default
    assert body["default"] is True and body["output"] == {"new": True}
    c.deploy_python_closure(model, 1, "doubles", answers_one)
    c.link_model_to_app(app, model)
    assert c.get_linked_models(app) == [model]
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 1
    c.unlink_model_from_app(app, model)
    assert c.get_linked_models(app) == []
    status, body = clipper.predict(app, {"input": [1.0]})
    assert body["default"] is True and "no model is linked" in body["default_explanation"]
    for kw, expected in [(dict(slo_micros=10), "latency_slo_micros"),
                         (dict(slo_micros="fast"), "must be int")]:
        with pytest.raises(ClipperAdminError) as e:
            c.update_application(app, **kw)
        assert e.value.status == 400 and expected in e.value.cause
    status, err = post_json(f"{clipper.management_url}/admin/update_app", {"name": app})
    assert status == 400 and "nothing to update" in err["cause"]
    status, err = post_json(f"{clipper.management_url}/admin/update_app",
                            {"name": app, "input_type": "ints"})
    assert status == 400 and "cannot change" in err["cause"]
    with pytest.raises(ClipperAdminError) as e:
        c.unlink_model_from_app(app, model)
    assert e.value.status == 404
    c.unregister_application(app)
    assert app not in c.get_all_apps()
    status, body = clipper.predict(app, {"input": [1.0]})
    assert status == 404
    with pytest.raises(ClipperAdminError) as e:
        c.unregister_application(app)
    assert e.value.status == 404 and app in e.value.cause
    # the model stays deployed after its app went
    assert c.get_model_info(model)["connected_replicas"] == 1
    retire(c, model)


def test_delete_versions_and_stop_inactive(clipper, versioned, unique):
    app, model = versioned
    c = clipper.conn
    c.deploy_python_closure(model, 3, "doubles", answers_one)
    with pytest.raises(ClipperAdminError) as e:
        c.delete_versioned_model(model, 3)  # the current one
    assert e.value.status == 409 and "set_model_version" in e.value.cause
    v1 = [r for r in _replicas(c, model) if r["model_version"] == "1"]
    assert len(v1) == 1
    c.delete_versioned_model(model, 1)
    assert f"{model}:1" not in c.get_all_models()
    _wait(lambda: not process_alive(v1[0]["pid"]), what="the deleted version's replica to exit")
    status, body = clipper.predict(app, {"input": [1.0], "version": "1"})
    assert status == 400 and "versions: 2, 3" in body["cause"]
    assert c.stop_inactive_model_versions([model]) == [f"{model}:2"]
    assert [m for m in c.get_all_models() if m.startswith(f"{model}:")] == [f"{model}:3"]
    assert {r["model_version"] for r in _replicas(c, model)} == {"3"}
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 1
    with pytest.raises(ClipperAdminError) as e:
        c.stop_inactive_model_versions([model, "no-such-model"])
    assert e.value.status == 404
    # the last version of a linked model stays; unlinked, it can go
    with pytest.raises(ClipperAdminError) as e:
        c.delete_versioned_model(model, 3)
    assert e.value.status == 409 and "unlink" in e.value.cause
    c.unlink_model_from_app(app, model)
    c.delete_versioned_model(model, 3)
    assert not [m for m in c.get_all_models() if m.startswith(f"{model}:")]
    _wait(lambda: not _replicas(c, model), what="every replica of the model to stop")


def test_concurrent_management_calls(clipper, unique):
    c = clipper.conn
    models = [unique("conc") for _ in range(3)]
    with ThreadPoolExecutor(6) as pool:
        deploys = [pool.submit(c.deploy_python_closure, m, 1, "doubles", answers_one)
                   for m in models]
        # the same version of one model twice at once: exactly one wins
        twice = [pool.submit(c.deploy_python_closure, models[0], 2, "doubles", answers_two)
                 for _ in range(2)]
        for f in deploys:
            assert f.result()["model_version"] == "1"
        outcomes = []
        for f in twice:
            try:
                outcomes.append(f.result()["model_version"])
            except ClipperAdminError as e:
                outcomes.append(e.status)
        assert sorted(map(str, outcomes)) == ["2", "409"]
        scales = [pool.submit(c.set_num_replicas, models[1], n) for n in (3, 2, 1, 2)]
        for f in scales:
            f.result()
    final = c.get_model_info(models[1])["num_replicas"]
    assert final in (1, 2, 3)
    _wait(lambda: len([r for r in _replicas(c, models[1]) if r["connected"]]) == final
          and len(_replicas(c, models[1])) == final,
          what="the replica count to settle on the registered one")
    for m in models:
        retire(c, m)
    assert not any(_replicas(c, m) for m in models)
