"""Open Inference Protocol v2: a client written for Triton (tritonclient.http) drives real
Clipper apps served by real model containers."""

import gzip
import json
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest

import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from clipper_core.testing import post_json


def row_sums(inputs):
    return [x.sum().item() for x in inputs]


def reverse_text(inputs):
    return [s[::-1] for s in inputs]


def hex_bytes(inputs):
    return [b.hex() for b in inputs]


def describe(inputs):
    return [{"n": len(x), "first": x[0].item()} for x in inputs]


APPS = {  # app -> (input_type, model closure, default output)
    "floats": ("floats", row_sums, -1.0),
    "ints": ("ints", row_sums, -1),
    "strings": ("strings", reverse_text, "none"),
    "bytes": ("bytes", hex_bytes, ""),
    "objects": ("doubles", describe, {"n": 0}),
}


@pytest.fixture(scope="module")
def oip_apps(clipper):
    conn = clipper.conn
    names = {}
    for key, (input_type, fn, default) in APPS.items():
        name = f"oip-{key}"
        conn.register_application(name, input_type, default, 2_000_000)
        conn.deploy_python_closure(name, 1, input_type, fn)
        conn.link_model_to_app(name, name)
        names[key] = name
    return names


@pytest.fixture
def triton(clipper):
    client = th.InferenceServerClient(clipper.query_url.removeprefix("http://"),
                                      network_timeout=30.0)
    yield client
    client.close()


def infer(client, app, array, datatype, *, binary_in, binary_out, **kw):
    inp = th.InferInput("input", list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary_in)
    out = th.InferRequestedOutput("output", binary_data=binary_out)
    return client.infer(app, [inp], outputs=[out], **kw)


FORMS = [pytest.param(b_in, b_out, id=f"{'bin' if b_in else 'json'}-in-"
                      f"{'bin' if b_out else 'json'}-out")
         for b_in in (True, False) for b_out in (True, False)]


@pytest.mark.parametrize("binary_in,binary_out", FORMS)
def test_fp32_rows_are_queries(triton, oip_apps, binary_in, binary_out):
    x = np.array([[1.5, 2.25, -1.0], [0.0, 0.5, 4.0]], dtype=np.float32)
    r = infer(triton, oip_apps["floats"], x, "FP32", binary_in=binary_in,
              binary_out=binary_out)
    out = r.as_numpy("output")
    assert out.dtype == np.float64 and out.shape == (2,)
    np.testing.assert_allclose(out, x.sum(axis=1))
    resp = r.get_response()
    assert resp["model_name"] == oip_apps["floats"] and resp["model_version"] == "1"
    assert resp["parameters"]["default"] is False
    assert resp["parameters"]["model"] == f"{oip_apps['floats']}:1"
    assert ("binary_data_size" in resp["outputs"][0].get("parameters", {})) == binary_out


@pytest.mark.parametrize("binary_in,binary_out", FORMS)
def test_int64_into_an_ints_app(triton, oip_apps, binary_in, binary_out):
    x = np.array([[1, 2, 3], [-7, 2**31 - 1, -(2**31) + 7]], dtype=np.int64)
    r = infer(triton, oip_apps["ints"], x, "INT64", binary_in=binary_in, binary_out=binary_out)
    out = r.as_numpy("output")
    assert out.dtype == np.int64
    assert out.tolist() == [int(v) for v in x.astype(np.int32).sum(axis=1)]


@pytest.mark.parametrize("binary_in,binary_out", FORMS)
def test_bytes_tensor_into_a_strings_app(triton, oip_apps, binary_in, binary_out):
    words = ["hello", "", "ünïcødé ✓"]
    x = np.array([w.encode() for w in words], dtype=np.object_)
    r = infer(triton, oip_apps["strings"], x, "BYTES", binary_in=binary_in,
              binary_out=binary_out)
    out = r.as_numpy("output")
    got = [v.decode() if isinstance(v, bytes) else v for v in out.tolist()]
    assert got == [w[::-1] for w in words]
    assert r.get_output("output")["parameters"]["content_type"] == "str"


@pytest.mark.parametrize("binary_in", [True, False])
def test_bytes_tensor_into_a_bytes_app(triton, oip_apps, binary_in):
    items = [b"\x00\x01hello", b"", bytes(range(200, 256))]
    if not binary_in:  # JSON carries BYTES as UTF-8 text
        items = [b"plain", "ünï".encode()]
    x = np.array(items, dtype=np.object_).reshape(len(items), 1)  # [N, 1] works too
    r = infer(triton, oip_apps["bytes"], x, "BYTES", binary_in=binary_in, binary_out=True)
    assert [v.decode() for v in r.as_numpy("output").tolist()] == [b.hex() for b in items]


def test_request_id_is_echoed(triton, oip_apps):
    x = np.ones((1, 2), dtype=np.float32)
    inp = th.InferInput("input", [1, 2], "FP32")
    inp.set_data_from_numpy(x)
    r = triton.infer(oip_apps["floats"], [inp], request_id="req-7")
    resp = r.get_response()
    assert resp["id"] == "req-7"
    assert r.as_numpy("output").tolist() == [2.0]


def test_objects_come_back_as_json_text(triton, oip_apps):
    x = np.array([[3.0, 1.0], [5.0, 1.0]])
    for binary_out in (True, False):
        r = infer(triton, oip_apps["objects"], x, "FP64", binary_in=True, binary_out=binary_out)
        assert r.get_output("output")["parameters"]["content_type"] == "json"
        assert [json.loads(v) for v in r.as_numpy("output").tolist()] == [
            {"n": 2, "first": 3.0}, {"n": 2, "first": 5.0}]


def test_versioned_routes(triton, oip_apps):
    app = oip_apps["floats"]
    x = np.ones((1, 3), dtype=np.float32)
    r = infer(triton, app, x, "FP32", binary_in=True, binary_out=True, model_version="1")
    assert r.as_numpy("output").tolist() == [3.0]
    assert triton.is_model_ready(app, "1")
    assert triton.get_model_metadata(app, "1")["versions"] == ["1"]
    with pytest.raises(InferenceServerException) as e:
        infer(triton, app, x, "FP32", binary_in=True, binary_out=True, model_version="9")
    assert e.value.status() == "404" and "versions: 1" in e.value.message()
    assert not triton.is_model_ready(app, "9")


def test_metadata_names_the_datatypes(triton, oip_apps):
    meta = triton.get_server_metadata()
    assert meta["name"] == "clipper" and "binary_tensor_data" in meta["extensions"]
    expect = {"floats": ("FP32", [-1, -1], "FP64"), "ints": ("INT32", [-1, -1], "INT64"),
              "strings": ("BYTES", [-1], "BYTES"), "bytes": ("BYTES", [-1], "BYTES")}
    for key, (dtype, shape, out_type) in expect.items():
        m = triton.get_model_metadata(oip_apps[key])
        assert m["name"] == oip_apps[key] and m["versions"] == ["1"]
        assert m["inputs"] == [{"name": "input", "datatype": dtype, "shape": shape}]
        assert m["outputs"][0]["datatype"] == out_type
    assert triton.is_server_live()
    assert triton.is_model_ready(oip_apps["floats"])


def test_compressed_request_and_response(triton, oip_apps):
    x = np.random.default_rng(7).random((1000, 4)).astype(np.float32)
    r = infer(triton, oip_apps["floats"], x, "FP32", binary_in=True, binary_out=False,
              request_compression_algorithm="gzip", response_compression_algorithm="gzip")
    np.testing.assert_allclose(r.as_numpy("output"), x.sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("app,array,datatype,expected", [
    ("ints", np.array([[1.5]], dtype=np.float32), "FP32", "INT8 or INT16"),
    ("floats", np.array([[1]], dtype=np.int64), "INT64", "FP16 or FP32 or FP64"),
    ("strings", np.array([[1.0]]), "FP64", "BYTES"),
    ("ints", np.array([[2**40]], dtype=np.int64), "INT64", "32-bit signed"),
    ("floats", np.ones((2, 2, 2), dtype=np.float32), "FP32", "[N, M]"),
    ("strings", np.array([[b"a", b"b"]], dtype=np.object_), "BYTES", "[N, 1]"),
])
@pytest.mark.parametrize("binary_in", [True, False])
def test_bad_tensors_are_400_naming_what_was_expected(triton, oip_apps, app, array, datatype,
                                                      expected, binary_in):
    with pytest.raises(InferenceServerException) as e:
        infer(triton, oip_apps[app], array, datatype, binary_in=binary_in, binary_out=True)
    assert e.value.status() == "400", e.value.message()
    assert expected in e.value.message()


def test_unknown_app_is_404(triton):
    x = np.ones((1, 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        infer(triton, "no-such-app", x, "FP32", binary_in=True, binary_out=True)
    assert e.value.status() == "404" and "no-such-app" in e.value.message()
    assert not triton.is_model_ready("no-such-app")
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("no-such-app")
    assert e.value.status() == "404"


def _post(clipper, path, body, headers=None):
    req = urllib.request.Request(clipper.query_url + path, data=body, method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _tensor_req(datatype, shape, data=None, size=None, **extra):
    t = {"name": "input", "datatype": datatype, "shape": shape}
    if data is not None:
        t["data"] = data
    if size is not None:
        t["parameters"] = {"binary_data_size": size}
    return {"inputs": [t], **extra}


@pytest.mark.parametrize("app,body,headers,expected", [
    ("floats", _tensor_req("FP32", [2, 3], [1, 2, 3, 4, 5]), None, "needs 6 values"),
    ("floats", _tensor_req("FP32", [2, 2], [[1, 2], [3]]), None, "ragged"),
    ("floats", _tensor_req("FP32", [1, 2], [1, "x"]), None, "must hold numbers"),
    ("ints", _tensor_req("INT32", [1, 2], [1, 2.5]), None, "must hold integers"),
    ("floats", _tensor_req("FP32", [0, 3], []), None, "at least one value"),
    ("strings", _tensor_req("BYTES", [2], ["a", 1]), None, "must hold strings"),
    ("strings", _tensor_req("BYTES", [2], ["a"]), None, "needs 2 elements"),
    ("floats", {"inputs": []}, None, "exactly one input tensor"),
    ("floats", {"input": [1.0]}, None, "needs 'inputs'"),
    ("floats", _tensor_req("FP32", [1, 1], [1.0], outputs=[{"name": "OUTPUT0"}]), None,
     "one output, 'output'"),
    ("floats", _tensor_req("FP32", "x", [1.0]), None, "'shape'"),
    ("floats", _tensor_req("FP32", [1, 1]), None, "neither 'data'"),
])
def test_malformed_json_requests(clipper, oip_apps, app, body, headers, expected):
    status, _, raw = _post(clipper, f"/v2/models/{oip_apps[app]}/infer",
                           json.dumps(body).encode(), headers)
    assert status == 400, raw
    err = json.loads(raw)
    assert expected in err["error"], err
    assert err["code"] in ("invalid_input", "missing_field", "bad_request", "malformed_json")


def _binary_body(head: dict, raw: bytes, header_len=None):
    h = json.dumps(head).encode()
    return h + raw, {"Inference-Header-Content-Length": str(len(h) if header_len is None
                                                             else header_len)}


@pytest.mark.parametrize("app,head,raw,header_len,expected", [
    ("floats", _tensor_req("FP32", [1, 3], size=8), b"\0" * 8, None, "needs 12 bytes"),
    ("floats", _tensor_req("FP32", [1, 3], size=12), b"\0" * 8, None, "8 bytes follow"),
    ("floats", _tensor_req("FP32", [1, 2], [1.0, 2.0]), b"\0" * 4, None,
     "declares no parameters.binary_data_size"),
    ("floats", _tensor_req("FP32", [1, 1], size=4), b"\0" * 4, 10**6, "body holds"),
    ("floats", _tensor_req("FP32", [1, 1], size=4), b"\0" * 4, "abc", "byte count"),
    ("strings", _tensor_req("BYTES", [1], size=6), struct.pack("<I", 5) + b"ab", None,
     "declares 5 bytes"),
    ("strings", _tensor_req("BYTES", [1], size=2), b"ab", None, "ends before element 0"),
    ("strings", _tensor_req("BYTES", [1], size=7), struct.pack("<I", 1) + b"abc", None,
     "2 bytes after"),
    ("strings", _tensor_req("BYTES", [1], size=6), struct.pack("<I", 2) + b"\xff\xfe", None,
     "not valid UTF-8"),
])
def test_malformed_binary_requests(clipper, oip_apps, app, head, raw, header_len, expected):
    body, headers = _binary_body(head, raw, header_len)
    status, _, answer = _post(clipper, f"/v2/models/{oip_apps[app]}/infer", body, headers)
    assert status == 400, answer
    assert expected in json.loads(answer)["error"]


def test_binary_request_by_hand_and_binary_response(clipper, oip_apps):
    """The byte layout, checked without tritonclient: FP32 rows in, FP64 binary out."""
    x = np.array([[1.0, 2.0], [3.0, 4.5]], dtype="<f4")
    head = _tensor_req("FP32", [2, 2], size=x.nbytes,
                       parameters={"binary_data_output": True})
    body, headers = _binary_body(head, x.tobytes())
    status, rh, answer = _post(clipper, f"/v2/models/{oip_apps['floats']}/infer", body,
                               headers)
    assert status == 200, answer
    n = int(rh["Inference-Header-Content-Length"])
    meta = json.loads(answer[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(answer[n:], "<f8").tolist() == [3.0, 7.5]


def test_unlinked_app_default_and_503(clipper, triton, unique):
    with_default, without = unique("oip-lonely"), unique("oip-nodefault")
    clipper.conn.register_application(with_default, "doubles", -1.0, 100_000)
    clipper.conn.register_application(without, "doubles", None, 100_000)
    x = np.ones((2, 1))
    r = infer(triton, with_default, x, "FP64", binary_in=True, binary_out=True)
    assert r.as_numpy("output").tolist() == [-1.0, -1.0]
    params = r.get_response()["parameters"]
    assert params["default"] is True and params["default_count"] == 2
    assert "no model is linked" in params["default_explanation"]
    assert not triton.is_model_ready(with_default)
    with pytest.raises(InferenceServerException) as e:
        infer(triton, without, x, "FP64", binary_in=True, binary_out=True)
    assert e.value.status() == "503" and "no default output" in e.value.message()


def slow_model(inputs):
    import time

    time.sleep(0.3)
    return [1.0 for _ in inputs]


def test_slo_miss_answers_default_in_parameters(clipper, triton, unique):
    app, model = unique("oip-slow"), unique("oip-sleepy")
    c = clipper.conn
    c.register_application(app, "doubles", -5.0, 50_000)
    c.deploy_python_closure(model, 1, "doubles", slow_model)
    c.link_model_to_app(app, model)
    # (answering by the deadline is test_predict's business; this is about the parameters)
    r = infer(triton, app, np.ones((1, 1)), "FP64", binary_in=True, binary_out=False)
    assert r.as_numpy("output").tolist() == [-5.0]
    params = r.get_response()["parameters"]
    assert params["default"] is True and params["default_count"] == 1
    assert isinstance(params["default_explanation"], str) and params["default_explanation"]


def test_oip_and_predict_share_the_app(clipper, oip_apps):
    status, body = clipper.predict(oip_apps["floats"], {"input": [1.0, 2.0]})
    assert status == 200 and body["output"] == 3.0
    status, body = post_json(f"{clipper.query_url}/v2/models/{oip_apps['floats']}/infer",
                             _tensor_req("FP32", [2], [1.0, 2.0]))
    assert status == 200 and body["outputs"][0]["data"] == [3.0]


def test_oversize_body_is_413(clipper, oip_apps):
    raw = b"\0" * (11 * 1024 * 1024)
    body, headers = _binary_body(_tensor_req("FP32", [1, len(raw) // 4], size=len(raw)), raw)
    status, _, answer = _post(clipper, f"/v2/models/{oip_apps['floats']}/infer", body, headers)
    assert status == 413 and "larger than the limit" in json.loads(answer)["error"]


def test_gzip_body_by_hand(clipper, oip_apps):
    body = gzip.compress(json.dumps(_tensor_req("FP32", [1, 2], [2.0, 3.0])).encode())
    status, _, answer = _post(clipper, f"/v2/models/{oip_apps['floats']}/infer", body,
                              {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [5.0]
