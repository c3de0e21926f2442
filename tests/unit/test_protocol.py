"""The RPC codec: Hypothesis round-trips, and bad frames raise ProtocolError and nothing else."""

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clipper_rpc import protocol as P
from clipper_rpc.errors import ProtocolError

names = st.text(min_size=1, max_size=40)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
json_leaf = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | \
    st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)


def numeric_batch(input_type):
    dtype = P.NUMERIC_DTYPES[input_type]
    if dtype.kind == "i":
        elem = st.integers(-2**31, 2**31 - 1)
    else:
        elem = st.floats(allow_nan=False, width=dtype.itemsize * 8)
    return st.lists(st.lists(elem, min_size=1, max_size=8).map(
        lambda xs: np.array(xs, dtype=dtype)), min_size=1, max_size=10)


batches = st.one_of(
    *[numeric_batch(t).map(lambda xs, t=t: (t, xs)) for t in ("ints", "floats", "doubles")],
    st.lists(st.binary(max_size=30), min_size=1, max_size=10).map(lambda xs: ("bytes", xs)),
    st.lists(st.text(max_size=30), min_size=1, max_size=10).map(lambda xs: ("strings", xs)),
)


def roundtrip(msg):
    frames = P.encode(msg)
    return P.decode([bytes(memoryview(f)) for f in frames])


@given(batch=u32, b=batches)
def test_predict_roundtrip(batch, b):
    input_type, inputs = b
    got = roundtrip(P.PredictBatch(batch, input_type, inputs))
    assert got.batch_id == batch and got.input_type == input_type
    assert len(got.inputs) == len(inputs)
    for a, x in zip(got.inputs, inputs):
        if isinstance(x, np.ndarray):
            assert a.dtype == P.NUMERIC_DTYPES[input_type]
            np.testing.assert_array_equal(a, x)
        else:
            assert a == x


@given(batch=u32, input_type=st.sampled_from(["ints", "floats", "doubles"]),
       n=st.integers(2, 12), size=st.integers(0, 6), data=st.data())
def test_predict_roundtrip_of_inputs_of_one_size(batch, input_type, n, size, data):
    """The usual batch, every input one size, decodes through a 2-D view: each input comes
    back 1-D, its own values, even when the inputs are empty."""
    dtype = P.NUMERIC_DTYPES[input_type]
    flat = data.draw(numeric_batch(input_type).map(
        lambda xs: np.resize(np.concatenate(xs), n * size).astype(dtype)))
    inputs = [flat[i * size:(i + 1) * size].copy() for i in range(n)]
    got = roundtrip(P.PredictBatch(batch, input_type, inputs))
    assert len(got.inputs) == n
    for a, x in zip(got.inputs, inputs):
        assert a.ndim == 1 and a.dtype == dtype and a.shape == (size,)
        np.testing.assert_array_equal(a, x)


@given(batch=u32, outputs=st.lists(json_values, max_size=10), compute=u32)
def test_result_roundtrip(batch, outputs, compute):
    assert roundtrip(P.Result(batch, outputs, compute)) == P.Result(batch, outputs, compute)


@given(st.one_of(
    st.builds(P.Register, names, names, st.sampled_from(P.INPUT_TYPES), names,
              st.integers(0, 2**31), st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1))),
    st.builds(P.Registered, u32),
    st.builds(P.Registered, u32, st.lists(names, max_size=5).map(tuple)),
    st.builds(P.Heartbeat, st.booleans()),
    st.builds(P.Error, u32, names, st.text(max_size=200), st.text(max_size=200)),
    st.just(P.Reset()),
    st.just(P.Shutdown()),
))
def test_control_roundtrip(msg):
    assert roundtrip(msg) == msg


def test_numpy_outputs_become_plain_values():
    got = roundtrip(P.Result(1, [np.float32(1.5), np.arange(3), np.int64(7)]))
    assert got.outputs == [1.5, [0, 1, 2], 7]


def test_bytes_outputs_are_refused_at_encode():
    with pytest.raises(TypeError, match="JSON-native"):
        P.encode(P.Result(1, [b"raw"]))


def _valid_frames():
    return [bytes(memoryview(f)) for f in
            P.encode(P.PredictBatch(3, "doubles", [np.ones(3), np.zeros(2)]))]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_garbage_raises_protocol_error_only(frames):
    try:
        P.decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.data())
def test_truncated_or_mutated_frames_raise_protocol_error_only(data):
    frames = _valid_frames()
    i = data.draw(st.integers(0, len(frames) - 1))
    f = frames[i]
    cut = data.draw(st.integers(0, max(0, len(f) - 1)))
    mode = data.draw(st.sampled_from(["truncate", "flip", "drop"]))
    if mode == "truncate":
        frames[i] = f[:cut]
    elif mode == "flip" and f:
        frames[i] = f[:cut] + bytes([f[cut] ^ 0xFF]) + f[cut + 1:]
    else:
        del frames[i]
    try:
        P.decode(frames)
    except ProtocolError:
        pass


@given(st.dictionaries(st.sampled_from(["v", "t", "batch", "n", "input_type", "model",
                                        "version", "instance", "heartbeat_ms", "busy"]),
                       json_leaf, max_size=6))
def test_arbitrary_headers_raise_protocol_error_only(h):
    for extra in ([], [b""], [b"", b""]):
        try:
            P.decode([msgpack.packb(h)] + extra)
        except ProtocolError:
            pass


def test_registered_without_frontends_is_what_older_frontends_send():
    """A container that knows nothing of ``frontends`` reads the REGISTERED of a cluster
    frontend like any other (an unknown header key is ignored), and a frontend list is
    optional for a container that does."""
    head = msgpack.unpackb(P.encode(P.Registered(1000))[0])
    assert head == {"v": 1, "t": 2, "heartbeat_ms": 1000}
    assert P.decode([msgpack.packb({"v": 1, "t": 2, "heartbeat_ms": 5})]) == P.Registered(5)
    two = ("tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102")
    assert P.decode(P.encode(P.Registered(1000, two))).frontends == two


@pytest.mark.parametrize("frontends", [[""], "tcp://x:1", [1], ["a" * 300],
                                       ["tcp://x:1"] * (P.MAX_FRONTENDS + 1)])
def test_malformed_frontend_lists_are_refused(frontends):
    head = msgpack.packb({"v": 1, "t": 2, "heartbeat_ms": 5, "frontends": frontends})
    with pytest.raises(ProtocolError, match="frontends"):
        P.decode([head])


def test_wrong_version_is_refused():
    frames = P.encode(P.Heartbeat())
    h = msgpack.unpackb(frames[0])
    h["v"] = 99
    with pytest.raises(ProtocolError, match="version 99 is not supported"):
        P.decode([msgpack.packb(h)])


def test_oversize_frames_are_refused():
    limits = P.Limits(max_payload_bytes=64)
    frames = [bytes(memoryview(f)) for f in P.encode(P.PredictBatch(1, "doubles", [np.ones(100)]))]
    with pytest.raises(ProtocolError, match="over the limit"):
        P.decode(frames, limits)
    big_header = msgpack.packb({"v": 1, "t": 3, "pad": "x" * 70_000})
    with pytest.raises(ProtocolError, match="over the limit"):
        P.decode([big_header])


def test_batch_count_limit():
    frames = [bytes(memoryview(f)) for f in P.encode(P.PredictBatch(1, "doubles", [np.ones(1)] * 5))]
    with pytest.raises(ProtocolError, match="over the limit"):
        P.decode(frames, P.Limits(max_batch=4))


def test_length_and_data_must_agree():
    head, lengths, data = _valid_frames()
    with pytest.raises(ProtocolError, match="data frame must be"):
        P.decode([head, lengths, data[:-8]])
    with pytest.raises(ProtocolError, match="lengths frame"):
        P.decode([head, lengths[:-4], data])


def test_invalid_utf8_strings_are_refused():
    head, lengths, _ = [bytes(memoryview(f)) for f in P.encode(P.PredictBatch(1, "strings", ["ab"]))]
    with pytest.raises(ProtocolError, match="UTF-8"):
        P.decode([head, lengths, b"\xff\xfe"])


def test_result_count_must_match():
    head = msgpack.packb({"v": 1, "t": 5, "batch": 1, "n": 3})
    with pytest.raises(ProtocolError, match="n=3"):
        P.decode([head, msgpack.packb([1, 2])])


def test_result_with_binary_output_is_refused():
    head = msgpack.packb({"v": 1, "t": 5, "batch": 1, "n": 1})
    with pytest.raises(ProtocolError):
        P.decode([head, msgpack.packb([b"\x00"], use_bin_type=True)])


def test_non_bytes_frames_are_refused():
    with pytest.raises(ProtocolError):
        P.decode([123])
    with pytest.raises(ProtocolError):
        P.decode(None)
    with pytest.raises(ProtocolError):
        P.decode([])
