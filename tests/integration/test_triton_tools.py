"""Triton's own tools against a Clipper app: tritonclient's model config, statistics and
repository index, and ``perf_analyzer`` (from the tritonclient 2.41.0 wheel) sweeping
concurrency 1..16 over HTTP to the end.  Asserts that the sweep completes and what it
reports is well formed, never how fast anything was."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import perf_analyzer as pa_bench  # noqa: E402  (benchmarks/perf_analyzer.py)


def fsum(xs):
    return [float(x.sum()) for x in xs]


@pytest.fixture(scope="module")
def app(clipper):
    name = f"tri-{os.getpid() % 1000}"
    c = clipper.conn
    # an int default and float answers: the metadata must declare what /infer answers
    c.register_application(name, "doubles", -1, 1_000_000, cache_enabled=False)
    c.deploy_python_closure(name, 1, "doubles", fsum)
    c.link_model_to_app(name, name)
    return name


def client(clipper):
    return th.InferenceServerClient(clipper.query_url.split("//", 1)[1])


def test_config_stats_and_repository_index(clipper, app):
    cl = client(clipper)
    cfg = cl.get_model_config(app)
    assert cfg["name"] == app and cfg["max_batch_size"] > 0
    assert cfg["input"][0] == {**cfg["input"][0], "name": "input", "data_type": "TYPE_FP64",
                               "dims": [-1]}
    before = cl.get_inference_statistics(app)["model_stats"][0]
    inp = th.InferInput("input", [3, 2], "FP64")
    inp.set_data_from_numpy(np.arange(6, dtype=np.float64).reshape(3, 2))
    res = cl.infer(app, [inp])
    assert res.as_numpy("output").tolist() == [1.0, 5.0, 9.0]
    after = cl.get_inference_statistics(app)["model_stats"][0]
    assert after["name"] == app and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] > before["execution_count"]
    assert (after["inference_stats"]["success"]["count"]
            - before["inference_stats"]["success"]["count"]) == 3  # queries, not requests
    assert after["inference_stats"]["compute_infer"]["ns"] >= 0
    index = {m["name"]: m for m in cl.get_model_repository_index()}
    assert index[app]["state"] == "READY" and index[app]["version"] == "1"
    # metadata and config declare the datatype /infer answered with (FP64, not the
    # default output's INT64)
    assert res.get_output("output")["datatype"] == "FP64"
    assert cl.get_model_metadata(app)["outputs"][0]["datatype"] == "FP64"
    assert cl.get_model_config(app)["output"][0]["data_type"] == "TYPE_FP64"
    with pytest.raises(InferenceServerException):
        cl.get_model_config("no-such-app")
    with pytest.raises(InferenceServerException):
        cl.get_inference_statistics(app, model_version="9")


def test_repository_index_says_why_an_app_is_unavailable(clipper, unique):
    name = unique("lonely")
    clipper.conn.register_application(name, "doubles", 0.0, 100_000)
    entry = next(m for m in client(clipper).get_model_repository_index() if m["name"] == name)
    assert entry["state"] == "UNAVAILABLE" and "no linked model" in entry["reason"]
    stats = client(clipper).get_inference_statistics()["model_stats"]
    assert name in {s["name"] for s in stats}


def test_perf_analyzer_sweeps_concurrency_1_to_16(clipper, app, tmp_path):
    started = time.monotonic()
    out = pa_bench.run_perf_analyzer(clipper.query_url, "1:16:2", 300, 1000.0, 5,
                                     str(tmp_path / "pa.csv"), timeout_s=100, app=app)
    assert sorted(out["levels"]) == [1, 3, 5, 7, 9, 11, 13, 15], out["stdout"][-2000:]
    for row in out["levels"].values():
        assert row["throughput_rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert "failed" not in out["stdout"].lower()
    assert time.monotonic() - started < 100


def test_perf_analyzer_needs_libb64_and_cudart():
    env = pa_bench.perf_analyzer_env()
    p = subprocess.run(["ldd", pa_bench.perf_analyzer_binary()], env=env, capture_output=True,
                       text=True, timeout=30)
    missing = [ln for ln in p.stdout.splitlines() if "not found" in ln]
    assert not missing, ("perf_analyzer cannot load: " + "; ".join(missing) + " (libb64.so.0d"
                         " comes from Debian's libb64-0d, listed in .ci/system-packages.txt)")
