"""Turn a JSON ``input`` value into what the model receives, or raise ``InvalidInput``.

numeric types -> 1-d numpy arrays (``ints`` int32, ``floats`` float32, ``doubles`` float64);
``bytes`` -> bytes (base64 in JSON); ``strings`` -> str.  numpy does the per-element work in C:
the Python cost per query is constant.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any, Callable

import numpy as np

from .errors import InvalidInput

_INT32 = np.iinfo(np.int32)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def describe(value: Any) -> str:
    """How an error message names a JSON value's kind."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _numeric(value: Any, app: str, input_type: str, kind_ok: str, dtype: np.dtype,
             what: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"input must be a non-empty list of {what} for app {app!r} "
                           f"(input_type {input_type}), got {describe(value)}"
                           f"{' (empty)' if isinstance(value, list) else ''}")
    try:
        arr = np.array(value)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in kind_ok:
        bad = next((v for v in value if isinstance(v, bool)
                    or not isinstance(v, (int, float) if "f" in kind_ok else int)), None)
        got = describe(bad) if bad is not None or arr is None else f"{arr.dtype} values"
        raise InvalidInput(f"input must be a list of {what} for app {app!r} "
                           f"(input_type {input_type}), got a list containing {got}")
    if dtype == np.int32:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < _INT32.min or hi > _INT32.max:
            raise InvalidInput(f"input for app {app!r} (input_type ints) must fit in 32-bit "
                               f"signed integers, got a value of {hi if hi > _INT32.max else lo}")
    elif dtype == np.float32 and arr.size and float(np.abs(arr).max()) > _FLOAT32_MAX:
        raise InvalidInput(f"input for app {app!r} (input_type floats) must fit in 32-bit "
                           "floats")
    return arr.astype(dtype, copy=False)


def parse_ints(value: Any, app: str) -> np.ndarray:
    return _numeric(value, app, "ints", "i", np.dtype(np.int32), "integers")


def parse_floats(value: Any, app: str) -> np.ndarray:
    return _numeric(value, app, "floats", "if", np.dtype(np.float32), "numbers")


def parse_doubles(value: Any, app: str) -> np.ndarray:
    return _numeric(value, app, "doubles", "if", np.dtype(np.float64), "numbers")


def parse_bytes(value: Any, app: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"input must be a base64 string for app {app!r} (input_type "
                           f"bytes), got {describe(value)}")
    try:
        return b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"input for app {app!r} (input_type bytes) must be valid base64: "
                           f"{e}") from None


def parse_strings(value: Any, app: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"input must be a string for app {app!r} (input_type strings), "
                           f"got {describe(value)}")
    return value


PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "ints": parse_ints,
    "floats": parse_floats,
    "doubles": parse_doubles,
    "bytes": parse_bytes,
    "strings": parse_strings,
}


def input_key(input_type: str, value: Any) -> bytes:
    """The bytes that identify an input (cache key material)."""
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)
