"""clipper-bench request bodies, protocol detection, answer flags and /stats arithmetic."""

from __future__ import annotations

import json

import pytest

from clipper_core.bench.serverstats import breakdown
from clipper_core.bench.target import (
    FLAG_CACHE_HIT,
    FLAG_DEFAULT,
    BenchConfigError,
    answer_flags,
    build_target,
    detect_protocol,
)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://h:1337/myapp/predict", "clipper"),
        ("http://h:1337/myapp/predict/", "clipper"),
        ("http://h/v2/models/iris/infer", "oip"),
        ("http://h/v2/models/iris/versions/3/infer", "oip"),
        ("http://h/v2/models/iris/ready", "generic"),
        ("http://h/a/b/predict", "generic"),
        ("http://h/score", "generic"),
    ],
)
def test_detect_protocol(url, kind):
    assert detect_protocol(url) == kind


def test_clipper_body_default_and_given_input():
    t = build_target("http://127.0.0.1:1337/myapp/predict")
    assert t.protocol == "clipper"
    assert json.loads(t.body(0)) == {"input": [1.0, 2.0, 3.0]}
    assert t.stats_url == "http://127.0.0.1:1337/stats"
    t = build_target("http://127.0.0.1:1337/myapp/predict", input_json='["a", "b"]')
    assert json.loads(t.body(5)) == {"input": ["a", "b"]}


def test_oip_body():
    t = build_target("http://h:8080/v2/models/iris/infer", input_json="[1, 2, 3, 4]")
    assert t.protocol == "oip"
    assert json.loads(t.body(0)) == {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]
    }
    assert t.stats_url is None  # not a Clipper target unless --stats-url says so
    t = build_target("http://h/v2/models/iris/infer", input_json="[[1, 2], [3, 4], [5, 6]]")
    body = json.loads(t.body(0))["inputs"][0]
    assert body["shape"] == [3, 2]
    assert body["data"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(BenchConfigError, match="list of numbers"):
        build_target("http://h/v2/models/iris/infer", input_json='["x"]')


def test_body_template_counter_and_file(tmp_path):
    t = build_target("http://h/score", body_template='{"id": {{i}}, "tag": "q{{i}}"}')
    assert t.protocol == "generic"
    assert json.loads(t.body(0)) == {"id": 0, "tag": "q0"}
    assert json.loads(t.body(41)) == {"id": 41, "tag": "q41"}
    f = tmp_path / "body.json"
    f.write_text('{"x": [1, 2]}')
    t = build_target("http://h/myapp/predict", body_template=str(f))
    assert t.body(3) == b'{"x": [1, 2]}'  # a template replaces the Clipper body, verbatim


def test_config_errors_say_what_was_wrong():
    with pytest.raises(BenchConfigError, match="--body-template"):
        build_target("http://h/score", body_template="{not json")
    with pytest.raises(BenchConfigError, match="neither a Clipper app"):
        build_target("http://h/score")
    with pytest.raises(BenchConfigError, match="--input must be JSON"):
        build_target("http://h/app/predict", input_json="[1,")
    with pytest.raises(BenchConfigError, match="http://"):
        build_target("ftp://h/app/predict")
    with pytest.raises(BenchConfigError, match="--method"):
        build_target("http://h/app/predict", method="BAD METHOD")
    with pytest.raises(BenchConfigError, match="--header"):
        build_target("http://h/app/predict", headers=["no-colon"])


def test_headers_and_stats_url_override():
    t = build_target("http://h/app/predict", headers=["X-Key: abc"], stats_url="none")
    assert ("X-Key", "abc") in t.headers
    assert ("Content-Type", "application/json") in t.headers
    assert t.stats_url is None
    t = build_target("http://h/v2/models/m/infer", stats_url="http://h:1338/stats")
    assert t.stats_url == "http://h:1338/stats"


@pytest.mark.parametrize(
    ("body", "protocol", "flags"),
    [
        (b'{"output": 1, "default": true, "cache_hit": true}', "clipper", FLAG_DEFAULT | FLAG_CACHE_HIT),
        (b'{"output": 1, "default": false, "cache_hit": true}', "clipper", FLAG_CACHE_HIT),
        (b'{"output": 1}', "clipper", 0),
        (b'{"outputs": [], "parameters": {"default": true}}', "oip", FLAG_DEFAULT),
        (b'{"outputs": [], "parameters": {"cache_hit": true}}', "oip", FLAG_CACHE_HIT),
        (b'{"default": true}', "oip", 0),  # OIP flags live in parameters
        (b'{"parameters": {"default": true}}', "clipper", 0),
        (b'{"parameters": {"default": true}}', "generic", FLAG_DEFAULT),
        (b'{"default": "yes"}', "clipper", 0),  # only a JSON true counts
        (b"default, but not JSON", "clipper", 0),
        (b'["default"]', "generic", 0),
    ],
)
def test_answer_flags(body, protocol, flags):
    assert answer_flags(body, protocol) == flags


def snap(**models):
    return {"models": models}


def cs(count, total):
    return {"count": count, "sum": total}


def test_breakdown_is_the_mean_of_the_difference():
    before = snap(**{"m:1": {"queue_delay_s": cs(10, 1.0), "model_compute_s": cs(10, 0.5), "batch_size": cs(5, 20)}})
    after = snap(
        **{
            "m:1": {"queue_delay_s": cs(30, 1.2), "model_compute_s": cs(30, 0.9), "batch_size": cs(9, 40)},
            "n:2": {"queue_delay_s": cs(20, 0.6), "rpc_s": cs(4, 0.004), "batch_size": cs(4, 20)},
        }
    )
    b = breakdown(before, after)
    m = b["models"]["m:1"]
    assert m["queue_us"] == pytest.approx(0.2 / 20 * 1e6)  # 10 ms
    assert m["compute_us"] == pytest.approx(0.4 / 20 * 1e6)
    assert m["batch_size"] == pytest.approx(20 / 4)
    assert m["batches"] == 4
    assert m["rpc_us"] is None and m["batch_wait_us"] is None
    n = b["models"]["n:2"]  # appeared during the level: all of it counts
    assert n["queue_us"] == pytest.approx(30_000)
    assert n["rpc_us"] == pytest.approx(1000)
    total = b["total"]  # count-weighted over models
    assert total["queue_us"] == pytest.approx((0.2 + 0.6) / 40 * 1e6)
    assert total["batch_size"] == pytest.approx(40 / 8)


def test_breakdown_without_a_snapshot_or_movement():
    assert breakdown(None, snap()) is None
    assert breakdown(snap(), None) is None
    same = snap(**{"m:1": {"queue_delay_s": cs(3, 0.3)}})
    assert breakdown(same, same) == {
        "models": {},
        "total": {
            "queue_us": None,
            "batch_wait_us": None,
            "rpc_us": None,
            "compute_us": None,
            "batch_size": None,
            "batches": 0,
        },
    }
