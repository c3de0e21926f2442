"""/metrics (Prometheus text, parsed by prometheus_client's own parser) and /stats move as
expected after a known number of queries, defaults and errors."""

import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def scrape(clipper):
    ctype, text = get(clipper.query_url + "/metrics")
    assert ctype.startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def stats(clipper):
    return json.loads(get(clipper.query_url + "/stats")[1])


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def picky(inputs):
    out = []
    for x in inputs:
        if x[0] < 0:
            raise ValueError("negative inputs are not supported")
        out.append(float(x[0]))
    return out


def test_counters_and_histograms_move_by_known_amounts(clipper, unique):
    app, model, nodefault = unique("m-app"), unique("m-model"), unique("m-nodefault")
    c = clipper.conn
    c.register_application(app, "doubles", 0.0, 2_000_000)
    c.register_application(nodefault, "doubles", None, 100_000)  # no model, no default
    c.deploy_python_closure(model, 1, "doubles", picky)
    c.link_model_to_app(app, model)
    m = {"model": model, "version": "1"}
    before = scrape(clipper)
    assert value(before, "clipper_queries_total", app=app, outcome="prediction") == 0
    assert value(before, "clipper_replicas", **m) == 1
    assert value(before, "clipper_replicas_up", **m) == 1

    # 3 defaults (the model raises on each, one batch each), then 5 predictions: 2 through
    # /predict, 3 in one OIP request; queries are sent one request at a time
    for _ in range(3):
        status, body = clipper.predict(app, {"input": [-1.0]})
        assert status == 200 and body["default"] is True
    for v in (1.0, 2.0):
        status, body = clipper.predict(app, {"input": [v]})
        assert status == 200 and body["output"] == v
    client = th.InferenceServerClient(clipper.query_url.removeprefix("http://"))
    inp = th.InferInput("input", [3, 1], "FP64")
    inp.set_data_from_numpy(np.array([[3.0], [4.0], [5.0]]))
    assert client.infer(app, [inp]).as_numpy("output").tolist() == [3.0, 4.0, 5.0]
    client.close()
    status, body = clipper.predict(nodefault, {"input": [1.0]})
    assert status == 503

    after = scrape(clipper)
    q = {o: value(after, "clipper_queries_total", app=app, outcome=o)
         for o in ("prediction", "default", "shed", "error")}
    assert q == {"prediction": 5, "default": 3, "shed": 0, "error": 0}
    assert value(after, "clipper_queries_total", app=nodefault, outcome="error") == 1
    # end-to-end latency: one observation per query, all of them in the +Inf bucket
    assert value(after, "clipper_query_latency_seconds_count", app=app) == 8
    assert value(after, "clipper_query_latency_seconds_bucket", app=app, le="+Inf") == 8
    assert value(after, "clipper_query_latency_seconds_sum", app=app) > 0

    # per model: the 5 good queries went out in successful batches (one per /predict request,
    # one to three for the OIP request), the 3 bad ones in batches that raised.  A replica
    # stalled past its RPC timeout on a busy machine gets a batch re-sent, so the batch-level
    # figures are bounds here; the model-level counters are exact.
    assert value(after, "clipper_model_queries_total", **m) == 8
    assert value(after, "clipper_model_errors_total", **m) == 3
    assert value(after, "clipper_batch_size_sum", **m) >= 5
    batches = value(after, "clipper_batch_size_count", **m)
    assert batches >= 3
    assert value(after, "clipper_rpc_seconds_count", **m) == batches
    assert value(after, "clipper_model_compute_seconds_count", **m) == batches
    delays = value(after, "clipper_queue_delay_seconds_count", **m)
    assert delays >= 8
    assert value(after, "clipper_queue_delay_seconds_bucket", le="+Inf", **m) == delays
    waits = value(after, "clipper_batch_wait_seconds_count", **m)
    assert waits >= batches + 3
    assert value(after, "clipper_queue_depth", **m) == 0
    # buckets are cumulative
    rpc = [value(after, "clipper_rpc_seconds_bucket", le=le, **m)
           for le in ("0.001", "0.01", "0.1", "1.0", "+Inf")]
    assert rpc == sorted(rpc) and rpc[-1] == batches

    # /stats: the same figures as JSON, in the shape the benchmark CLI reads
    s = stats(clipper)
    a = s["apps"][app]
    assert {k: a[k] for k in ("prediction", "default", "shed", "error")} == q
    assert s["apps"][nodefault]["error"] == 1
    ms = s["models"][f"{model}:1"]
    assert ms["queue_delay_s"]["count"] == delays
    assert ms["batch_size"] == {"count": batches,
                                "sum": value(after, "clipper_batch_size_sum", **m)}
    assert ms["rpc_s"]["count"] == ms["model_compute_s"]["count"] == batches
    assert ms["batch_wait_s"]["count"] == waits
    assert ms["rpc_s"]["sum"] == pytest.approx(value(after, "clipper_rpc_seconds_sum", **m))
    assert ms["queue_depth"] == 0 and ms["replicas"] == 1 and ms["errors"] == 3
    assert ms["queries"] == 8


def test_openmetrics_on_request(clipper):
    req = urllib.request.Request(clipper.query_url + "/metrics",
                                 headers={"Accept": "application/openmetrics-text; "
                                                    "version=1.0.0"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.read().decode().endswith("# EOF\n")


def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


def test_cache_hits_and_misses_are_counted(clipper, unique):
    app, model = unique("m-cached"), unique("m-cached-model")
    c = clipper.conn
    c.register_application(app, "doubles", 0.0, 2_000_000, cache_enabled=True)
    c.deploy_python_closure(model, 1, "doubles", add_one)
    c.link_model_to_app(app, model)
    for _ in range(3):  # one miss, then two hits
        status, body = clipper.predict(app, {"input": [41.0]})
        assert status == 200 and body["output"] == 42.0
    client = th.InferenceServerClient(clipper.query_url.removeprefix("http://"))
    inp = th.InferInput("input", [1, 1], "FP64")
    inp.set_data_from_numpy(np.array([[41.0]]))
    r = client.infer(app, [inp])
    client.close()
    assert r.as_numpy("output").tolist() == [42.0]
    assert r.get_response()["parameters"]["cache_hit"] is True
    after = scrape(clipper)
    assert value(after, "clipper_cache_hits_total", app=app) == 3
    assert value(after, "clipper_cache_misses_total", app=app) == 1
    a = stats(clipper)["apps"][app]
    assert (a["cache_hits"], a["cache_misses"], a["prediction"]) == (3, 1, 4)
