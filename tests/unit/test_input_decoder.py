"""One decoder from JSON to arrays: /predict and OIP give the same verdict on the same values."""

import json

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings, strategies as st

from clipper_core.config import AppConfig
from clipper_core.errors import InvalidInput, brief
from clipper_core.inputs import PARSERS
from clipper_core.mgmt_guard import ALLOWED_HOSTS, allow_hosts
from clipper_core.oip import decode_infer

DTYPE = {"ints": "INT64", "floats": "FP64", "doubles": "FP64"}
elements = (st.integers(-2**40, 2**40) | st.floats(-1e300, 1e300, allow_nan=False)
            | st.booleans() | st.sampled_from([3.5e38, -3.5e38, 3.4e38, 2**31, -2**31 - 1]))


def _predict(input_type, values):
    try:
        return PARSERS[input_type](values, "a")
    except InvalidInput:
        return None


def _oip(input_type, values):
    body = json.dumps({"inputs": [{"name": "x", "datatype": DTYPE[input_type],
                                   "shape": [1, len(values)], "data": values}]}).encode()
    try:
        return decode_infer(body, None, AppConfig("a", input_type)).inputs[0]
    except InvalidInput:
        return None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["ints", "floats", "doubles"]), st.lists(elements, min_size=1, max_size=6))
def test_predict_and_oip_agree(input_type, values):
    a, b = _predict(input_type, values), _oip(input_type, values)
    assert (a is None) == (b is None), (input_type, values, a, b)
    if a is not None:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    if any(type(v) is bool for v in values):
        assert a is None, "a boolean was coerced into a number"


def test_brief_never_copies_a_whole_value():
    deep = 1
    for _ in range(5000):
        deep = [deep]
    assert brief(deep) == "a list" and brief({"a": deep}) == "an object"
    assert len(brief("x" * 10**6)) < 80 and brief(3) == "3" and brief(None) == "None"


@pytest.mark.parametrize("host,port,ok,refused", [
    ("127.0.0.1", 80, ["127.0.0.1:80", "localhost:80", "[::1]:80"], ["evil.example:80",
                                                                      "127.0.0.1:81"]),
    ("::1", 9, ["[::1]:9", "localhost:9"], ["[::2]:9"]),
    ("10.1.2.3", 5, ["10.1.2.3:5"], ["localhost:5", "evil:5"]),
])
def test_allowed_hosts(host, port, ok, refused):
    app = web.Application()
    allow_hosts(app, host, port)
    assert all(h in app[ALLOWED_HOSTS] for h in ok)
    assert not any(h in app[ALLOWED_HOSTS] for h in refused)


def test_a_wildcard_bind_leaves_host_to_the_token():
    app = web.Application()
    allow_hosts(app, "0.0.0.0", 1)
    assert app[ALLOWED_HOSTS] is None
