"""benchmarks/run.py: a smoke run of a scenario against a real Clipper, and its refusals.

Asserts that a run produces its table and results file, never how fast anything was.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "benchmarks", "run.py")
OVERHEAD = os.path.join(ROOT, "benchmarks", "scenarios", "overhead.toml")


def run(*args, timeout=100):
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_overhead_scenario_quick_run_prints_table_and_writes_results(tmp_path):
    proc = run(OVERHEAD, "--quick", "--models", "noop", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "== overhead" in out
    for row in ("Clipper p50 (client latency)", "HTTP floor p50", "ZeroMQ hop + model p50",
                "model compute p50 (in-process)", "Clipper - HTTP - ZeroMQ (own work)"):
        assert row in out
    assert str(tmp_path / "overhead.quick.json") in out

    report = json.loads((tmp_path / "overhead.quick.json").read_text())
    assert report["kind"] == "overhead" and report["quick"] is True
    assert report["machine"]["cpus"] == os.cpu_count()
    assert [r["model"] for r in report["runs"]] == ["noop"]  # one repetition, one model
    run0 = report["runs"][0]
    assert run0["clipper"]["requests"]["ok"] > 0
    assert run0["clipper"]["requests"]["errors"] == 0
    assert run0["clipper"]["default_share"] == 0.0  # every answer came from the model...
    assert run0["clipper"]["cache_hit_share"] == 0.0  # ...not from the cache (off by default here)
    assert run0["http_floor"]["requests"]["ok"] > 0
    assert run0["zmq_floor_ms"]["p50"] > 0 and run0["in_process_ms"]["p50"] > 0
    noop = report["summary"]["noop"]
    assert noop["clipper_p50"]["median"] == run0["derived_us"]["clipper_p50"]
    d = run0["derived_us"]
    assert d["own"] == pytest.approx(d["clipper_p50"] - d["http_p50"] - d["zmq_p50"])


def test_unknown_model_and_kind_are_refused_before_anything_starts(tmp_path):
    proc = run(OVERHEAD, "--models", "nosuch", "--results-dir", str(tmp_path), timeout=30)
    assert proc.returncode == 1
    assert "no model named nosuch" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "bogus"\n')
    proc = run(str(bad), "--results-dir", str(tmp_path), timeout=30)
    assert proc.returncode == 1
    assert "kind must be one of overhead, slo_throughput, compare, got 'bogus'" in proc.stderr
    bad.write_text('kind = "slo_throughput"\nmax_default_share = 0.01\n')
    proc = run(str(bad), "--results-dir", str(tmp_path), timeout=30)
    assert proc.returncode == 1
    assert "a slo_throughput scenario does not take max_default_share" in proc.stderr
    assert not list(tmp_path.glob("*.json"))


def test_missing_scikit_learn_names_the_install_command(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import _models

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    with pytest.raises(_models.ScenarioError, match=r"pip install scikit-learn"):
        _models.build({"kind": "sklearn"})


def test_overload_benchmark_without_oha_says_how_to_get_it(tmp_path):
    """benchmarks/overload.py needs the open-loop generator oha; without it the run stops
    at once and names the install command."""
    env = dict(os.environ, PATH=str(tmp_path), HOME=str(tmp_path))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "overload.py"),
                          "--quick"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "cargo install oha --locked" in out.stderr + out.stdout
