"""Clipper RPC protocol, sans-IO: messages to frames and frames to messages.

A message is a list of frames.  Frame 0 is a msgpack map, the header, that always carries the
protocol version ``v`` and the message type ``t``.  Array data travels in further raw frames so
that numpy buffers cross without a copy.  This module imports neither zmq nor asyncio; see
``docs/protocol.md`` for the byte-level specification.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack
import numpy as np

from .errors import ProtocolError

PROTOCOL_VERSION = 1

INPUT_TYPES = ("ints", "floats", "doubles", "bytes", "strings")
#: wire dtype of each numeric input type (little-endian on the wire, whatever the host)
NUMERIC_DTYPES = {
    "ints": np.dtype("<i4"),
    "floats": np.dtype("<f4"),
    "doubles": np.dtype("<f8"),
}
LENGTH_DTYPE = np.dtype("<u4")
_U32 = struct.Struct("<I")


class MsgType(enum.IntEnum):
    REGISTER = 1
    REGISTERED = 2
    HEARTBEAT = 3
    PREDICT = 4
    RESULT = 5
    ERROR = 6
    RESET = 7
    SHUTDOWN = 8


@dataclass(frozen=True)
class Limits:
    """Explicit size limits; anything larger is a :class:`ProtocolError`."""

    max_header_bytes: int = 64 * 1024
    max_payload_bytes: int = 256 * 1024 * 1024
    max_batch: int = 100_000
    max_name_chars: int = 253
    max_text_chars: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_payload_bytes", "max_batch",
                     "max_name_chars", "max_text_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class Register:
    """Container -> frontend: a replica announces itself (also after a reconnect)."""

    model_name: str
    model_version: str
    input_type: str
    instance_id: str
    pid: int = 0
    info: dict = field(default_factory=dict)


#: at most this many frontend addresses in a REGISTERED message
MAX_FRONTENDS = 64


@dataclass(frozen=True)
class Registered:
    """Frontend -> container: registration accepted.  ``frontends``: the RPC addresses of
    every frontend of the cluster (several frontends sharing a state store); the container
    connects to each (one DEALER per frontend).  Empty: serve only the frontend it connected
    to.  A frontend sends REGISTERED again when the list changes."""

    heartbeat_ms: int
    frontends: tuple = ()


@dataclass(frozen=True)
class Heartbeat:
    """Either direction: I am alive.  ``busy`` is set by a container computing a batch."""

    busy: bool = False


@dataclass(frozen=True)
class PredictBatch:
    """Frontend -> container: evaluate ``inputs`` (a list, one entry per query)."""

    batch_id: int
    input_type: str
    inputs: list


@dataclass(frozen=True)
class Result:
    """Container -> frontend: one JSON-native output per input of batch ``batch_id``."""

    batch_id: int
    outputs: list
    #: time the model spent in ``predict``, measured in the container (0 = not reported)
    compute_us: int = 0


@dataclass(frozen=True)
class Error:
    """Container -> frontend: the model raised while evaluating batch ``batch_id``."""

    batch_id: int
    error: str
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class Reset:
    """Frontend -> container: I do not know you (I restarted?): register again."""


@dataclass(frozen=True)
class Shutdown:
    """Frontend -> container: finish the batch in hand, then exit."""


Message = Register | Registered | Heartbeat | PredictBatch | Result | Error | Reset | Shutdown


# ---------------------------------------------------------------------------- encoding

def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


#: one reused packer for headers (``packb`` builds a Packer per call: twice the cost of a small
#: header).  Headers hold only str, int, bool and plain maps, so packing one never calls back
#: into Python and never lets another thread use the packer half-way.
_pack_header = msgpack.Packer(use_bin_type=True).pack


def _header(t: MsgType, **fields: Any) -> bytes:
    fields["v"] = PROTOCOL_VERSION
    fields["t"] = int(t)
    return _pack_header(fields)


def _json_native(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy values become plain Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(
        f"model output must be JSON-native (number, string, bool, None, list, dict), "
        f"got {type(obj).__name__}"
    )


def encode_outputs(outputs: Sequence[Any]) -> bytes:
    """msgpack-encode a list of model outputs; raises TypeError for non JSON-native values."""
    for o in outputs:
        if isinstance(o, (bytes, bytearray, memoryview)):
            raise TypeError("model output must be JSON-native, got bytes (base64-encode it)")
    return msgpack.packb(list(outputs), use_bin_type=True, default=_json_native)


def encode_inputs(input_type: str, inputs: Sequence[Any]) -> tuple[bytes, Any]:
    """Return the (lengths, data) payload frames of a batch of inputs."""
    n = len(inputs)
    if input_type in NUMERIC_DTYPES:
        dtype = NUMERIC_DTYPES[input_type]
        if n == 1:  # the common case at low load: no array of lengths to build
            data = np.ascontiguousarray(inputs[0], dtype=dtype)
            return _U32.pack(len(data)), data
        lengths = np.fromiter((len(x) for x in inputs), LENGTH_DTYPE, n)
        if not n:  # an empty batch is the frontend's warm-up probe
            data = np.empty(0, dtype)
        else:
            data = np.concatenate(inputs).astype(dtype, copy=False)
        return lengths.tobytes(), data
    if input_type == "bytes":
        parts = inputs
    elif input_type == "strings":
        parts = [s.encode("utf-8") for s in inputs]
    else:
        raise ValueError(f"unknown input type {input_type!r}; expected one of {INPUT_TYPES}")
    lengths = np.fromiter((len(p) for p in parts), LENGTH_DTYPE, n)
    return lengths.tobytes(), b"".join(parts)


def encode_predict(batch_id: int, input_type: str, inputs: Sequence[Any]) -> list:
    """Frames of ``PredictBatch(batch_id, input_type, inputs)``, without building the
    message object (the frontend's hot path: one call per batch)."""
    lengths, data = encode_inputs(input_type, inputs)
    return [_pack_header({"batch": batch_id, "input_type": input_type, "n": len(inputs),
                          "v": PROTOCOL_VERSION, "t": 4}), lengths, data]


def encode_result(batch_id: int, outputs: Sequence[Any], compute_us: int = 0) -> list:
    """Frames of ``Result(batch_id, outputs, compute_us)``, without building the message
    object (the container's hot path: one call per batch); TypeError for outputs that are
    not JSON-native."""
    body = encode_outputs(outputs)
    return [_pack_header({"batch": batch_id, "n": len(outputs), "compute_us": compute_us,
                          "v": PROTOCOL_VERSION, "t": 5}), body]


def encode(msg: Message) -> list:
    """Frames of ``msg`` (bytes or buffer objects), ready for ``send_multipart``."""
    if isinstance(msg, PredictBatch):
        return encode_predict(msg.batch_id, msg.input_type, msg.inputs)
    if isinstance(msg, Result):
        return encode_result(msg.batch_id, msg.outputs, msg.compute_us)
    if isinstance(msg, Heartbeat):
        return [_header(MsgType.HEARTBEAT, busy=msg.busy)]
    if isinstance(msg, Register):
        return [_header(MsgType.REGISTER, model=msg.model_name, version=msg.model_version,
                        input_type=msg.input_type, instance=msg.instance_id, pid=msg.pid,
                        info=msg.info)]
    if isinstance(msg, Registered):
        if msg.frontends:  # optional: a container that does not know it ignores it
            return [_header(MsgType.REGISTERED, heartbeat_ms=msg.heartbeat_ms,
                            frontends=list(msg.frontends))]
        return [_header(MsgType.REGISTERED, heartbeat_ms=msg.heartbeat_ms)]
    if isinstance(msg, Error):
        return [_header(MsgType.ERROR, batch=msg.batch_id, error=msg.error,
                        message=msg.message, traceback=msg.traceback)]
    if isinstance(msg, Reset):
        return [_header(MsgType.RESET)]
    if isinstance(msg, Shutdown):
        return [_header(MsgType.SHUTDOWN)]
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


# ---------------------------------------------------------------------------- decoding

def _unpack(buf: Any, limits: Limits, what: str, **kw: Any) -> Any:
    try:
        return msgpack.unpackb(buf, raw=False, strict_map_key=True, **kw)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises many types: all mean a malformed frame
        raise ProtocolError(f"malformed {what}: {type(e).__name__}: {e}") from None


def _get(h: dict, key: str, typ: type | tuple, limits: Limits, what: str) -> Any:
    if key not in h:
        raise ProtocolError(f"{what} header lacks field {key!r}")
    val = h[key]
    if isinstance(val, bool) and typ is not bool:
        raise ProtocolError(f"{what} field {key!r} must be {_tname(typ)}, got bool")
    if not isinstance(val, typ):
        raise ProtocolError(
            f"{what} field {key!r} must be {_tname(typ)}, got {type(val).__name__}")
    if isinstance(val, str):
        cap = limits.max_text_chars if key in ("message", "traceback") else limits.max_name_chars
        if len(val) > cap:
            raise ProtocolError(f"{what} field {key!r} is longer than {cap} characters")
    if isinstance(val, int) and not isinstance(val, bool) and val < 0:
        raise ProtocolError(f"{what} field {key!r} must be >= 0, got {val}")
    return val


def _tname(typ: type | tuple) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def _nbytes(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def _expect_frames(frames: Sequence[Any], n: int, what: str) -> None:
    if len(frames) != n:
        raise ProtocolError(f"{what} message must have {n} frame(s), got {len(frames)}")


def decode_inputs(input_type: str, n: int, lengths_buf: Any, data: Any,
                  limits: Limits = DEFAULT_LIMITS) -> list:
    """Inverse of :func:`encode_inputs`: numeric inputs become zero-copy numpy views."""
    if _nbytes(lengths_buf) != n * LENGTH_DTYPE.itemsize:
        raise ProtocolError(
            f"PREDICT lengths frame must be {n * LENGTH_DTYPE.itemsize} bytes for n={n}, "
            f"got {_nbytes(lengths_buf)}")
    if n == 1 and input_type in NUMERIC_DTYPES:  # the common case at low load
        dtype = NUMERIC_DTYPES[input_type]
        (total,) = _U32.unpack(lengths_buf)
        if _nbytes(data) != total * dtype.itemsize:
            raise ProtocolError(
                f"PREDICT data frame must be {total * dtype.itemsize} bytes "
                f"({total} x {input_type}), got {_nbytes(data)}")
        return [np.frombuffer(data, dtype)]
    lengths = np.frombuffer(lengths_buf, LENGTH_DTYPE).astype(np.int64)
    total = int(lengths.sum())
    if input_type in NUMERIC_DTYPES:
        dtype = NUMERIC_DTYPES[input_type]
        if _nbytes(data) != total * dtype.itemsize:
            raise ProtocolError(
                f"PREDICT data frame must be {total * dtype.itemsize} bytes "
                f"({total} x {input_type}), got {_nbytes(data)}")
        flat = np.frombuffer(data, dtype)
        if n <= 1:
            return [flat] if n else []
        sizes = lengths.tolist()
        if sizes.count(sizes[0]) == n:
            # inputs of one size (the usual case): the rows of one 2-D view, a tenth of
            # what np.split costs
            return list(flat.reshape(n, sizes[0]))
        return np.split(flat, np.cumsum(lengths[:-1]))
    if input_type not in ("bytes", "strings"):
        raise ProtocolError(f"unknown input type {input_type!r}; expected one of {INPUT_TYPES}")
    if _nbytes(data) != total:
        raise ProtocolError(f"PREDICT data frame must be {total} bytes, got {_nbytes(data)}")
    view = memoryview(data)
    out = []
    pos = 0
    for ln in lengths.tolist():
        chunk = bytes(view[pos:pos + ln])
        pos += ln
        if input_type == "strings":
            try:
                out.append(chunk.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ProtocolError(f"PREDICT string input is not valid UTF-8: {e}") from None
        else:
            out.append(chunk)
    return out


#: message type number -> MsgType (a dict lookup; calling the enum costs a microsecond)
_MSG_TYPES = {int(m): m for m in MsgType}
_MSG_NAMES = {m: m.name for m in MsgType}


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode a message (the frames after any routing identity).

    Raises :class:`ProtocolError`, and nothing else, for anything malformed.
    """
    try:
        frames = list(frames)
    except TypeError:
        raise ProtocolError("a message must be a sequence of frames") from None
    if not frames:
        raise ProtocolError("empty message: expected at least a header frame")
    for i, f in enumerate(frames):
        if not isinstance(f, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"frame {i} must be bytes, got {type(f).__name__}")
        if _nbytes(f) > (limits.max_header_bytes if i == 0 else limits.max_payload_bytes):
            raise ProtocolError(f"frame {i} is {_nbytes(f)} bytes, over the limit")
    h = _unpack(frames[0], limits, "header",
                max_bin_len=0, max_ext_len=0)
    if not isinstance(h, dict):
        raise ProtocolError(f"header must be a msgpack map, got {type(h).__name__}")
    v = h.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {v!r} is not supported; this side speaks {PROTOCOL_VERSION}")
    t = h.get("t")
    t = _MSG_TYPES.get(t) if type(t) is int else None
    if t is None:
        raise ProtocolError(f"unknown message type {h.get('t')!r}")
    what = _MSG_NAMES[t]

    if t is MsgType.PREDICT:
        _expect_frames(frames, 3, what)
        batch = _get(h, "batch", int, limits, what)
        input_type = _get(h, "input_type", str, limits, what)
        n = _get(h, "n", int, limits, what)
        if input_type not in INPUT_TYPES:
            raise ProtocolError(
                f"PREDICT input_type must be one of {INPUT_TYPES}, got {input_type!r}")
        if n > limits.max_batch:
            raise ProtocolError(f"PREDICT batch of {n} is over the limit {limits.max_batch}")
        return PredictBatch(batch, input_type, decode_inputs(input_type, n, frames[1],
                                                             frames[2], limits))
    if t is MsgType.RESULT:
        _expect_frames(frames, 2, what)
        batch = _get(h, "batch", int, limits, what)
        n = _get(h, "n", int, limits, what)
        outputs = _unpack(frames[1], limits, "RESULT outputs",
                          max_bin_len=0,
                          max_ext_len=0)
        if not isinstance(outputs, list) or len(outputs) != n:
            raise ProtocolError(f"RESULT outputs must be a list of n={n} values, got "
                                f"{type(outputs).__name__}"
                                f"{' of ' + str(len(outputs)) if isinstance(outputs, list) else ''}")
        compute_us = _get(h, "compute_us", int, limits, what) if "compute_us" in h else 0
        return Result(batch, outputs, compute_us)
    _expect_frames(frames, 1, what)
    if t is MsgType.HEARTBEAT:
        busy = h.get("busy", False)
        if not isinstance(busy, bool):
            raise ProtocolError("HEARTBEAT field 'busy' must be bool")
        return Heartbeat(busy)
    if t is MsgType.REGISTER:
        input_type = _get(h, "input_type", str, limits, what)
        if input_type not in INPUT_TYPES:
            raise ProtocolError(
                f"REGISTER input_type must be one of {INPUT_TYPES}, got {input_type!r}")
        info = h.get("info", {})
        if not isinstance(info, dict):
            raise ProtocolError("REGISTER field 'info' must be a map")
        pid = h.get("pid", 0)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise ProtocolError("REGISTER field 'pid' must be a non-negative int")
        return Register(_get(h, "model", str, limits, what),
                        _get(h, "version", str, limits, what), input_type,
                        _get(h, "instance", str, limits, what), pid, info)
    if t is MsgType.REGISTERED:
        frontends = h.get("frontends", [])
        if (not isinstance(frontends, list) or len(frontends) > MAX_FRONTENDS
                or not all(isinstance(a, str) and 0 < len(a) <= limits.max_name_chars
                           for a in frontends)):
            raise ProtocolError(f"REGISTERED field 'frontends' must be a list of at most "
                                f"{MAX_FRONTENDS} addresses (non-empty strings of at most "
                                f"{limits.max_name_chars} characters)")
        return Registered(_get(h, "heartbeat_ms", int, limits, what), tuple(frontends))
    if t is MsgType.ERROR:
        return Error(_get(h, "batch", int, limits, what), _get(h, "error", str, limits, what),
                     _get(h, "message", str, limits, what),
                     _get(h, "traceback", str, limits, what) if "traceback" in h else "")
    if t is MsgType.RESET:
        return Reset()
    return Shutdown()
