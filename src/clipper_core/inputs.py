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


#: what a numeric input type is converted to, and the array kinds accepted on the way
TARGET = {"ints": np.dtype(np.int32), "floats": np.dtype(np.float32),
          "doubles": np.dtype(np.float64)}


def _has_bool(value: list) -> bool:
    # type() per element in C: JSON true/false must not pass as 1/0 (numpy would coerce them)
    if bool in map(type, value):
        return True
    return list in map(type, value) and any(
        isinstance(v, list) and _has_bool(v) for v in value)


def json_array(value: list, input_type: str, where: str, *,
               integers: bool | None = None) -> np.ndarray:
    """The one decoder from a JSON list (flat or nested evenly) to the numeric array of
    ``input_type``, for ``/predict`` and the Open Inference Protocol alike: booleans, strings,
    ragged lists and values out of the type's range are refused with ``InvalidInput`` naming
    ``where``.  ``integers`` (default: ``input_type`` is ``ints``) refuses non-integers;
    call :func:`check_range` on the result."""
    ints = input_type == "ints" if integers is None else integers
    what = "integers" if ints else "numbers"
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"{where} must be a list of {what}, nested evenly if nested; got "
                           "a ragged or mixed list") from None
    kind = arr.dtype.kind
    kinds = "iu" if ints else "iuf"
    if kind not in kinds or _has_bool(value):
        got = {"f": "non-integer numbers (or integers beyond 64 bits)", "b": "booleans",
               "U": "strings",
               "O": "mixed values or numbers out of range"}.get(kind, f"{arr.dtype} values")
        if kind in kinds:
            got = "booleans among the numbers"
        raise InvalidInput(f"{where} must hold {what}, got {got}")
    return arr


def check_range(arr: np.ndarray, input_type: str, where: str) -> None:
    """Values must fit the input type: 32-bit signed integers for ``ints``; finite values
    within float32's range for ``floats`` (JSON cannot carry infinities; binary tensors may
    carry inf and NaN, which pass as they are)."""
    if not arr.size:
        return
    if input_type == "ints" and arr.dtype.kind in "iu" and arr.dtype.itemsize >= 4:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < _INT32.min or hi > _INT32.max:
            raise InvalidInput(f"{where} (input_type ints) must fit in 32-bit signed "
                               f"integers, got a value of {hi if hi > _INT32.max else lo}")
    elif input_type == "floats" and arr.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            big = (np.abs(arr) > _FLOAT32_MAX) & np.isfinite(arr)
        if big.any():
            raise InvalidInput(f"{where} (input_type floats) must fit in 32-bit floats")


def _numeric(value: Any, app: str, input_type: str, what: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"input must be a non-empty list of {what} for app {app!r} "
                           f"(input_type {input_type}), got {describe(value)}"
                           f"{' (empty)' if isinstance(value, list) else ''}")
    where = f"input for app {app!r} (input_type {input_type})"
    arr = json_array(value, input_type, where)
    if arr.ndim != 1:
        raise InvalidInput(f"{where} must be a flat list of {what}, got a nested list")
    check_range(arr, input_type, where)
    return arr.astype(TARGET[input_type], copy=False)


def parse_ints(value: Any, app: str) -> np.ndarray:
    return _numeric(value, app, "ints", "integers")


def parse_floats(value: Any, app: str) -> np.ndarray:
    return _numeric(value, app, "floats", "numbers")


def parse_doubles(value: Any, app: str) -> np.ndarray:
    return _numeric(value, app, "doubles", "numbers")


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
