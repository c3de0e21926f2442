"""The OIP v2 codec, sans-IO, checked against the official client's own (de)serialisers."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http import InferResult
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from clipper_core.config import AppConfig
from clipper_core.errors import BadRequest, InvalidInput
from clipper_core.oip import (InferRequest, decode_infer, encode_output, infer_response,
                              pack_bytes, unpack_bytes)
from clipper_core.predict import Outcome


def app(input_type):
    return AppConfig(f"a-{input_type}", input_type, None, 100_000)


def binary(tensor: dict, raw: bytes, **extra) -> tuple[bytes, str]:
    tensor = {**tensor, "parameters": {"binary_data_size": len(raw)}}
    head = json.dumps({"inputs": [tensor], **extra}).encode()
    return head + raw, str(len(head))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=20))
def test_bytes_framing_matches_tritonclient(items):
    ours = pack_bytes(items)
    theirs = serialize_byte_tensor(np.array(items, dtype=np.object_)).item()
    assert ours == theirs
    assert unpack_bytes(theirs, len(items)) == items
    assert [bytes(x) for x in deserialize_bytes_tensor(ours)] == items


@pytest.mark.parametrize("datatype,np_type", [("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8")])
def test_float_tensors_become_rows_of_the_apps_dtype(datatype, np_type):
    x = np.array([[1.0, 2.5], [-3.0, 0.25], [8.0, 9.0]], dtype=np_type)
    body, hl = binary({"name": "x", "datatype": datatype, "shape": [3, 2]}, x.tobytes())
    for input_type, want in (("doubles", np.float64), ("floats", np.float32)):
        req = decode_infer(body, hl, app(input_type))
        assert len(req.inputs) == 3
        assert all(r.dtype == want and r.shape == (2,) for r in req.inputs)
        assert np.array_equal(np.stack(req.inputs), x.astype(want))


def test_one_dimensional_shape_is_one_query():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [4],
                                   "data": [1, 2, 3, 4]}]}).encode()
    req = decode_infer(body, None, app("ints"))
    assert len(req.inputs) == 1 and req.inputs[0].dtype == np.int32
    assert req.inputs[0].tolist() == [1, 2, 3, 4]


def test_nested_json_data_follows_the_shape():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2, 2],
                                   "data": [[1, 2], [3, 4]]}]}).encode()
    req = decode_infer(body, None, app("ints"))
    assert [r.tolist() for r in req.inputs] == [[1, 2], [3, 4]]


def test_request_options():
    body = json.dumps({"id": "r1", "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                                               "data": ["hi"]}],
                       "parameters": {"timeout": 25_000, "binary_data_output": True},
                       "outputs": [{"name": "output", "parameters": {"binary_data": False}}]})
    req = decode_infer(body.encode(), None, app("strings"))
    assert req == InferRequest(["hi"], "r1", 25.0, False)


@pytest.mark.parametrize("tensor,expected", [
    ({"datatype": "FP32", "shape": [1, 1], "data": [1e39]}, "32-bit floats"),
    ({"datatype": "INT32", "shape": [1, 1], "data": [True]}, "booleans"),
    ({"datatype": "INT64", "shape": [1, 1], "data": [2**70]}, "beyond 64 bits"),
    ({"datatype": "FP64", "shape": [-1, 1], "data": [1.0]}, "non-negative"),
    ({"datatype": "FP64", "shape": [1, 1], "data": 1.0}, "must be a list"),
    ({"datatype": "BYTES", "shape": [1], "data": ["a"]}, "FP16 or FP32"),
    ({"datatype": "FP64", "shape": [1, 1], "data": [1.0],
      "parameters": {"shared_memory_region": "r"}}, "shared-memory"),
])
def test_json_tensor_errors(tensor, expected):
    body = json.dumps({"inputs": [{"name": "x", **tensor}]}).encode()
    input_type = "floats" if tensor["datatype"] == "FP32" else (
        "ints" if tensor["datatype"].startswith("INT") else "doubles")
    with pytest.raises(BadRequest) as e:
        decode_infer(body, None, app(input_type))
    assert expected in e.value.cause


@pytest.mark.parametrize("depth", [3, 500, 5000])
def test_deep_nesting_is_refused_not_a_crash(depth):
    data = "[" * depth + '"x"' + "]" * depth
    body = ('{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 1], "data": %s}]}'
            % data).encode()
    with pytest.raises(BadRequest):
        decode_infer(body, None, app("strings"))


def test_too_many_queries():
    x = np.zeros((10_001, 1), dtype="<f8")
    body, hl = binary({"name": "x", "datatype": "FP64", "shape": [10_001, 1]}, x.tobytes())
    with pytest.raises(InvalidInput, match="at most 10000"):
        decode_infer(body, hl, app("doubles"))


@pytest.mark.parametrize("values,datatype,shape,content_type", [
    ([1.5, 2.0], "FP64", [2], None),
    ([1, 2, -3], "INT64", [3], None),
    ([True, False], "BOOL", [2], None),
    ([[1.0, 2.0], [3.0, 4.0]], "FP64", [2, 2], None),
    (["cat", "dög"], "BYTES", [2], "str"),
    ([{"label": "cat"}, {"label": "dog"}], "BYTES", [2], "json"),
    ([1.0, "none"], "BYTES", [2], "json"),  # a model answer and a string default
    ([1, True], "BYTES", [2], "json"),
    ([[1.0], [2.0, 3.0]], "BYTES", [2], "json"),
    ([2**63, 1], "BYTES", [2], "json"),  # uint64 (msgpack carries no more)
    ([None, None], "BYTES", [2], "json"),
])
def test_output_encoding(values, datatype, shape, content_type):
    out = encode_output(values)
    assert (out.datatype, out.shape, out.content_type) == (datatype, shape, content_type)
    # both forms decode, with the official client, back to the values
    outcomes = [Outcome(i, v, False, None, ("m:1",)) for i, v in enumerate(values)]
    for binary_out in (True, False):
        body, hl = infer_response("app", None, InferRequest([None] * len(values), None, None,
                                                            binary_out), outcomes)
        got = InferResult.from_response_body(body, header_length=hl).as_numpy("output")
        if datatype != "BYTES":
            assert got.tolist() == values
        else:
            items = [v.decode() if isinstance(v, bytes) else v for v in got.tolist()]
            if content_type == "json":
                items = [json.loads(v) for v in items]
            assert items == values


def test_response_parameters():
    outcomes = [Outcome(1, 0.5, False, None, ("m:3",)),
                Outcome(2, -1.0, True, "too slow", (), 0.0)]
    body, hl = infer_response("app", None, InferRequest([None, None], "x", None, False),
                              outcomes)
    assert hl is None
    resp = json.loads(body)
    assert resp["model_name"] == "app" and resp["model_version"] == "3" and resp["id"] == "x"
    assert resp["parameters"] == {"default": True, "default_count": 1,
                                  "default_explanation": "too slow", "model": "m:3",
                                  "models": "m:3", "confidence": 1.0,
                                  "cache_hit": False, "cache_hits": 0}
    assert resp["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [2],
                                "data": [0.5, -1.0]}]
