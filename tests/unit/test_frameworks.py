"""The framework runtimes' shared, framework-free parts: option validation, batch assembly,
output conversion and the device rule."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_runtimes import _runner, frameworks


def test_defaults_are_filled_in():
    fw = frameworks.get("xgboost")
    assert frameworks.check_options(fw, "doubles", "json", None) == \
        {"method": "predict", "dtype": "float64"}
    assert frameworks.check_options(frameworks.get("onnx"), "floats", "onnx", {})["dtype"] \
        is None  # from the graph
    assert frameworks.check_options(frameworks.get("pytorch"), "floats", "pt",
                                    {"input_shape": [1, -1]})["input_shape"] == [1, -1]


@pytest.mark.parametrize("fw,input_type,fmt,options,msg", [
    ("caffe", "doubles", "x", {}, "framework must be one of"),
    ("xgboost", "strings", "json", {}, "takes input_type ints, floats, doubles"),
    ("xgboost", "doubles", "pkl", {}, "loads json, ubj artifacts"),
    ("xgboost", "doubles", "json", [], "options must be a JSON object"),
    ("xgboost", "doubles", "json", {"speed": 1}, "unknown option(s) speed"),
    ("lightgbm", "doubles", "txt", {"method": "predict_margin"},
     "predict, predict_proba, predict_raw"),
    ("pytorch", "floats", "pt", {"input_shape": [2, -1, -1]}, "at most one -1"),
    ("pytorch", "floats", "pt", {"input_shape": [True]}, "input_shape must be"),
    ("pytorch", "floats", "pt", {"dtype": "float8"}, "dtype must be one of"),
    ("onnx", "floats", "onnx", {"output": 1.5}, "'output' must be a name or an index"),
    ("lightgbm", "doubles", "txt", {"classes": ["a"]}, "at least two labels"),
    ("lightgbm", "doubles", "txt", {"classes": [1.0, float("nan")]}, "classes must be"),
])
def test_bad_options_say_what_was_expected(fw, input_type, fmt, options, msg):
    with pytest.raises(ValueError) as e:
        frameworks.check_options(frameworks.get(fw), input_type, fmt, options)
    assert msg in str(e.value)


def test_every_framework_names_its_extra_and_modules():
    for fw in frameworks.FRAMEWORKS.values():
        assert fw.install_hint() == f"pip install 'clipper-serving[{fw.extra}]'"
        assert fw.modules and fw.formats and fw.methods


def test_missing_modules_names_them():
    fw = frameworks.Framework("fake", "fake", ("json", "clipper_no_such_module"), ("x",),
                              ("predict",))
    assert frameworks.missing_modules(fw) == ["clipper_no_such_module"]
    assert "pip install 'clipper-serving[fake]'" in frameworks.missing_message(
        fw, ["clipper_no_such_module"])


@given(st.integers(1, 20), st.integers(1, 6), st.sampled_from(["float32", "float64"]))
def test_as_batch_stacks_rows_in_order(n, width, dtype):
    flat = np.arange(n * width, dtype="<f8")
    inputs = np.split(flat, n)  # what the protocol decoder hands over: views of one buffer
    x = _runner.as_batch(inputs, "doubles", dtype, None)
    assert x.shape == (n, width) and x.dtype == dtype and x.flags.writeable
    np.testing.assert_array_equal(x, flat.reshape(n, width).astype(dtype))


def test_as_batch_reshapes_and_refuses_mixed_lengths():
    inputs = [np.arange(6, dtype="<f4"), np.arange(6, dtype="<f4")]
    assert _runner.as_batch(inputs, "floats", None, (1, 2, 3)).shape == (2, 1, 2, 3)
    assert _runner.as_batch(inputs, "floats", None, (3, -1)).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="cannot be reshaped to input_shape"):
        _runner.as_batch(inputs, "floats", None, (4,))
    with pytest.raises(ValueError, match=r"same length; this batch has lengths \[2, 6\]"):
        _runner.as_batch(inputs + [np.zeros(2, "<f4")], "floats", None, None)
    assert _runner.as_batch(["a", "b"], "strings", None, None) == ["a", "b"]


def test_as_outputs_gives_one_json_value_per_input():
    assert _runner.as_outputs(np.array([1, 2]), 2) == [1, 2]
    assert _runner.as_outputs(np.array([[0.5, 0.5]]), 1) == [[0.5, 0.5]]
    assert _runner.as_outputs(np.array(["a", "b"]), 2) == ["a", "b"]
    assert _runner.as_outputs([{1: np.float32(0.5)}], 1) == [{"1": 0.5}]  # ONNX ZipMap
    with pytest.raises(ValueError, match="expected 3 rows"):
        _runner.as_outputs(np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="2 outputs for a batch of 1"):
        _runner.as_outputs([1, 2], 1)


@pytest.mark.parametrize("cvd,dev", [(None, "cpu"), ("", "cpu"), ("-1", "cpu"),
                                     ("0", "cuda:0"), ("3", "cuda:0"),
                                     ("GPU-8f0c", "cuda:0")])
def test_a_replica_uses_a_gpu_only_when_given_one(monkeypatch, cvd, dev):
    if cvd is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    assert _runner.device() == dev
