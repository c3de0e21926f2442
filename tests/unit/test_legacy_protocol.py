"""The original Clipper's protocol v3 codec: Hypothesis round-trips both ways, the byte layout
the original ``rpc.py`` reads and writes, and bad frames raise ProtocolError and nothing else.
Also the rules that sit beside it: JSON text in string answers, the original's input-type
aliases, and how ``GET /metrics`` tells Prometheus from the original client."""

import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from clipper_core.config import AppConfig, ModelVersion, check_input_type
from clipper_core.errors import ConfigError
from clipper_core.frontend import wants_json
from clipper_core.legacy_routes import default_output
from clipper_core.legacy_rpc import json_or_text
from clipper_rpc import legacy_protocol as L
from clipper_rpc.errors import ProtocolError

u32 = st.integers(min_value=0, max_value=2**32 - 1)
names = st.text(min_size=1, max_size=40)
DT = {"ints": np.int32, "floats": np.float32, "doubles": np.float64}


def numeric(t):
    elem = (st.integers(-2**31, 2**31 - 1) if t == "ints"
            else st.floats(allow_nan=False, width=np.dtype(DT[t]).itemsize * 8))
    return st.lists(st.lists(elem, min_size=0, max_size=8).map(
        lambda xs: np.array(xs, dtype=DT[t])), min_size=1, max_size=10)


batches = st.one_of(
    *[numeric(t).map(lambda xs, t=t: (t, xs)) for t in DT],
    st.lists(st.binary(max_size=30), min_size=1, max_size=10).map(lambda xs: ("bytes", xs)),
    st.lists(st.text(max_size=30), min_size=1, max_size=10).map(lambda xs: ("strings", xs)),
)


def frames(msg):
    return [bytes(memoryview(f)) for f in L.encode(msg)]


@given(msg_id=u32, b=batches)
def test_predict_request_roundtrip(msg_id, b):
    input_type, inputs = b
    got = L.decode_from_frontend(frames(L.PredictRequest(msg_id, input_type, inputs)))
    assert got.msg_id == msg_id and got.input_type == input_type
    assert len(got.inputs) == len(inputs)
    for a, x in zip(got.inputs, inputs):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(a, x)
        else:
            assert a == x


@given(msg_id=u32, outputs=st.lists(st.text(max_size=30), min_size=1, max_size=10))
def test_predict_response_roundtrip(msg_id, outputs):
    msg = L.PredictResponse(msg_id, outputs)
    assert L.decode_from_container(frames(msg)) == msg


@given(name=names, version=names, t=st.sampled_from(sorted(L.CODE_OF)))
def test_metadata_and_heartbeats_roundtrip(name, version, t):
    meta = L.ContainerMetadata(name, version, t)
    assert L.decode_from_container(frames(meta)) == meta
    assert L.decode_from_container(frames(L.ContainerHeartbeat())) == L.ContainerHeartbeat()
    for kind in L.HeartbeatType:
        assert L.decode_from_frontend(frames(L.Heartbeat(kind))) == L.Heartbeat(kind)


def test_predict_request_layout_is_what_the_original_container_reads():
    f = frames(L.PredictRequest(7, "doubles", [np.array([1.0, 2.0]), np.array([3.0])]))
    assert f[0] == b""
    assert struct.unpack("<I", f[1])[0] == 3  # RPC version
    assert struct.unpack("<I", f[2])[0] == 1  # CONTAINER_CONTENT
    assert struct.unpack("<I", f[3])[0] == 7  # message id
    assert struct.unpack("<I", f[4])[0] == 0  # PREDICT
    assert struct.unpack("<Q", f[5])[0] == len(f[6]) == 8 * 4
    # u64s: input type code (doubles = 3), number of inputs, each input's size in bytes
    assert np.frombuffer(f[6], "<u8").tolist() == [3, 2, 16, 8]
    assert np.frombuffer(f[7], "<f8").tolist() == [1.0, 2.0] and len(f) == 9


def test_container_messages_layout_is_what_the_original_container_sends():
    meta = frames(L.ContainerMetadata("m", "1", "ints"))
    assert meta == [b"", struct.pack("<I", 0), b"m", b"1", b"1", struct.pack("<I", 3)]
    assert frames(L.ContainerHeartbeat()) == [b"", struct.pack("<I", 2)]
    resp = frames(L.PredictResponse(9, ["1.0", "xy"]))
    assert resp[:4] == [b"", struct.pack("<I", 1), struct.pack("<I", 9), struct.pack("<Q", 24)]
    assert np.frombuffer(resp[4], "<u8").tolist() == [2, 3, 2] and resp[5:] == [b"1.0", b"xy"]


def test_empty_batch_is_refused_it_would_kill_an_original_container():
    with pytest.raises(ValueError, match="at least one input"):
        L.encode(L.PredictRequest(1, "doubles", []))


GOOD = frames(L.PredictResponse(1, ["a", "bc"]))


@pytest.mark.parametrize("bad, why", [
    ([], "at least 2 frames"),
    ([b"x", struct.pack("<I", 2)], "empty delimiter"),
    ([b"", b"\x02\x00"], "4-byte"),
    ([b"", struct.pack("<I", 9)], "unknown v3 message type"),
    ([b"", struct.pack("<I", 2), b"extra"], "2 frames"),
    ([b"", struct.pack("<I", 0), b"m", b"1", b"7", struct.pack("<I", 3)], "input type code"),
    ([b"", struct.pack("<I", 0), b"\xff", b"1", b"1", struct.pack("<I", 3)], "UTF-8"),
    (GOOD[:-1], "declares 2 outputs"),
    (GOOD[:3] + [struct.pack("<Q", 16)] + GOOD[4:], "header must be 16 bytes"),
    (GOOD[:5] + [b"a", b"b"], "declares 2 bytes"),
    ([b"", struct.pack("<I", 1), b"\x01\x00\x00\x00"], "at least 5 frames"),
    ([b"", "text"], "must be bytes"),
])
def test_malformed_container_messages(bad, why):
    with pytest.raises(ProtocolError, match=why):
        L.decode_from_container(bad)


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_garbage_raises_protocol_error_only(fs):
    for decode in (L.decode_from_container, L.decode_from_frontend):
        try:
            decode(fs)
        except ProtocolError:
            pass


def test_string_answers_are_json_where_they_are_json_text():
    assert json_or_text("96.85") == 96.85
    assert json_or_text('{"a": [1, 2]}') == {"a": [1, 2]}
    assert json_or_text("DEFAULT") == "DEFAULT"
    assert json_or_text('"quoted"') == "quoted"
    assert json_or_text("") == ""


def test_original_add_app_body_parses_its_default_output():
    body = {"name": "a", "input_type": "d", "default_output": "-1.0",
            "latency_slo_micros": 1000}
    assert default_output(body) == -1.0
    assert default_output({**body, "default_output": "DEFAULT"}) == "DEFAULT"
    # a body with Clipper's own fields keeps the string a native client gave
    assert default_output({**body, "cache_enabled": True}) == "-1.0"
    assert default_output({**body, "default_output": 3}) == 3


@pytest.mark.parametrize("alias, canonical", [
    ("integers", "ints"), ("int", "ints"), ("i", "ints"), ("integer", "ints"),
    ("double", "doubles"), ("d", "doubles"), ("float", "floats"), ("f", "floats"),
    ("str", "strings"), ("strs", "strings"), ("string", "strings"), ("s", "strings"),
    ("byte", "bytes"), ("b", "bytes"), (" Doubles ", "doubles")])
def test_input_type_aliases(alias, canonical):
    assert check_input_type(alias) == canonical
    assert AppConfig("a", alias).input_type == canonical
    assert ModelVersion("m", "1", alias).input_type == canonical


def test_unknown_input_type_names_the_choices():
    with pytest.raises(ConfigError, match="integers, int, i"):
        check_input_type("tensor-ish")
    with pytest.raises(ConfigError):
        check_input_type(3)


@pytest.mark.parametrize("accept, json_", [
    (None, False), ("", False),
    # Prometheus 2.x and older
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
    ("text/plain;version=0.0.4;q=1,*/*;q=0.1", False),
    ("*/*", True),  # requests, and so clipper_admin's inspect_instance
    ("application/json", True), ("application/json, */*", True),
])
def test_metrics_format_by_accept(accept, json_):
    assert wants_json(accept) is json_


def test_v3_messages_are_recognised_for_the_native_ports_hint():
    assert L.looks_like_v3(frames(L.ContainerHeartbeat()))
    assert L.looks_like_v3(frames(L.ContainerMetadata("m", "1", "doubles")))
    assert not L.looks_like_v3([b"\x82\xa1v\x01\xa1t\x03"])
    assert not L.looks_like_v3([b"", b"xy"])
