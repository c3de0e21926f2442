"""The original Clipper's RPC protocol, version 3, sans-IO: messages to frames and back.

Model containers built on the original Clipper (0.4, its ``rpc.py``) speak this protocol;
Clipper serves them on a port of its own (``clipper start --legacy-rpc-port``).  Every message
is a list of ZeroMQ frames that starts with an empty delimiter frame; integers are
little-endian, ``u32`` unless said otherwise.  See ``docs/protocol.md`` ("Protocol v3").

Frontend -> container (the frontend puts the RPC version after the delimiter):

* heartbeat: ``"" | u32 3 | u32 HEARTBEAT | u32 heartbeat type`` (KEEPALIVE, or
  REQUEST_CONTAINER_METADATA, which the container answers with its metadata)
* predict: ``"" | u32 3 | u32 CONTAINER_CONTENT | u32 message id | u32 PREDICT |
  u64 header bytes | header | one frame per input``; the header is u64s: input type code,
  number of inputs, then each input's size in bytes

Container -> frontend (no version field):

* heartbeat: ``"" | u32 HEARTBEAT``
* metadata: ``"" | u32 NEW_CONTAINER | model name | model version | input type code as
  decimal text | u32 RPC version``
* predict response: ``"" | u32 CONTAINER_CONTENT | message id (the 4 bytes it was sent) |
  u64 header bytes | header | one UTF-8 frame per output``; the header is u64s: number of
  outputs, then each output's size in bytes

The protocol carries only strings as outputs.  This module imports neither zmq nor asyncio.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import ProtocolError
from .protocol import DEFAULT_LIMITS, INPUT_TYPES, Limits

RPC_VERSION = 3


class InputCode(enum.IntEnum):
    BYTES = 0
    INTS = 1
    FLOATS = 2
    DOUBLES = 3
    STRINGS = 4


class MessageType(enum.IntEnum):
    NEW_CONTAINER = 0
    CONTAINER_CONTENT = 1
    HEARTBEAT = 2


class HeartbeatType(enum.IntEnum):
    KEEPALIVE = 0
    REQUEST_CONTAINER_METADATA = 1


class RequestType(enum.IntEnum):
    PREDICT = 0
    FEEDBACK = 1


#: Clipper input type <-> v3 input type code
CODE_OF = {"bytes": InputCode.BYTES, "ints": InputCode.INTS, "floats": InputCode.FLOATS,
           "doubles": InputCode.DOUBLES, "strings": InputCode.STRINGS}
TYPE_OF = {int(c): t for t, c in CODE_OF.items()}
#: element dtype of each numeric (and bytes) input type on the v3 wire
_DTYPES = {"bytes": np.dtype("i1"), "ints": np.dtype("<i4"), "floats": np.dtype("<f4"),
           "doubles": np.dtype("<f8")}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EMPTY = b""


# ---------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class Heartbeat:
    """Frontend -> container.  ``kind`` REQUEST_CONTAINER_METADATA asks for its metadata,
    which is the only way to get an answer out of an idle v3 container."""

    kind: HeartbeatType = HeartbeatType.KEEPALIVE


@dataclass(frozen=True)
class PredictRequest:
    """Frontend -> container: evaluate ``inputs`` (numpy arrays, bytes or str)."""

    msg_id: int
    input_type: str
    inputs: list


@dataclass(frozen=True)
class ContainerHeartbeat:
    """Container -> frontend: sent when it connects and after 5 s without a message."""


@dataclass(frozen=True)
class ContainerMetadata:
    """Container -> frontend: who it is (the answer to REQUEST_CONTAINER_METADATA)."""

    model_name: str
    model_version: str
    input_type: str
    rpc_version: int = RPC_VERSION


@dataclass(frozen=True)
class PredictResponse:
    """Container -> frontend: one string per input of request ``msg_id``."""

    msg_id: int
    outputs: list


ToContainer = Heartbeat | PredictRequest
FromContainer = ContainerHeartbeat | ContainerMetadata | PredictResponse


# ---------------------------------------------------------------------------- encoding

def _input_bytes(input_type: str, x: Any) -> bytes | memoryview:
    if input_type == "strings":
        return x.encode("utf-8") if isinstance(x, str) else bytes(x)
    if input_type == "bytes" and isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    arr = np.ascontiguousarray(x, dtype=_DTYPES[input_type])
    return memoryview(arr).cast("B")


def encode(msg: ToContainer | FromContainer) -> list:
    """Frames of ``msg`` (after any routing identity), ready for ``send_multipart``."""
    if isinstance(msg, PredictRequest):
        if msg.input_type not in CODE_OF:
            raise ValueError(f"unknown input type {msg.input_type!r}; expected one of "
                             f"{INPUT_TYPES}")
        if not msg.inputs:
            # the original container indexes outputs[0]: an empty batch would kill it
            raise ValueError("a v3 predict request needs at least one input")
        parts = [_input_bytes(msg.input_type, x) for x in msg.inputs]
        header = np.empty(2 + len(parts), np.dtype("<u8"))
        header[0] = int(CODE_OF[msg.input_type])
        header[1] = len(parts)
        header[2:] = [p.nbytes if isinstance(p, memoryview) else len(p) for p in parts]
        hb = header.tobytes()
        return [_EMPTY, _U32.pack(RPC_VERSION), _U32.pack(MessageType.CONTAINER_CONTENT),
                _U32.pack(msg.msg_id & 0xFFFFFFFF), _U32.pack(RequestType.PREDICT),
                _U64.pack(len(hb)), hb, *parts]
    if isinstance(msg, Heartbeat):
        return [_EMPTY, _U32.pack(RPC_VERSION), _U32.pack(MessageType.HEARTBEAT),
                _U32.pack(int(msg.kind))]
    if isinstance(msg, ContainerHeartbeat):
        return [_EMPTY, _U32.pack(MessageType.HEARTBEAT)]
    if isinstance(msg, ContainerMetadata):
        return [_EMPTY, _U32.pack(MessageType.NEW_CONTAINER), msg.model_name.encode(),
                msg.model_version.encode(), str(int(CODE_OF[msg.input_type])).encode(),
                _U32.pack(msg.rpc_version)]
    if isinstance(msg, PredictResponse):
        outs = [o.encode("utf-8") for o in msg.outputs]
        header = np.array([len(outs), *(len(o) for o in outs)], np.dtype("<u8")).tobytes()
        return [_EMPTY, _U32.pack(MessageType.CONTAINER_CONTENT),
                _U32.pack(msg.msg_id & 0xFFFFFFFF), _U64.pack(len(header)), header, *outs]
    raise TypeError(f"not a v3 protocol message: {type(msg).__name__}")


# ---------------------------------------------------------------------------- decoding

def _frames(frames: Sequence[Any], limits: Limits) -> list:
    try:
        frames = list(frames)
    except TypeError:
        raise ProtocolError("a message must be a sequence of frames") from None
    if len(frames) < 2:
        raise ProtocolError(f"a v3 message has at least 2 frames, got {len(frames)}")
    if len(frames) > limits.max_batch + 8:
        raise ProtocolError(f"a v3 message of {len(frames)} frames is over the limit")
    out = []
    for i, f in enumerate(frames):
        if not isinstance(f, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"frame {i} must be bytes, got {type(f).__name__}")
        f = bytes(f) if not isinstance(f, bytes) else f
        if len(f) > limits.max_payload_bytes:
            raise ProtocolError(f"frame {i} is {len(f)} bytes, over the limit")
        out.append(f)
    if out[0] != _EMPTY:
        raise ProtocolError("a v3 message starts with an empty delimiter frame, got "
                            f"{len(out[0])} bytes")
    return out


def _u32(frame: bytes, what: str) -> int:
    if len(frame) != 4:
        raise ProtocolError(f"v3 {what} must be a 4-byte little-endian integer, got "
                            f"{len(frame)} bytes")
    return _U32.unpack(frame)[0]


def _u64(frame: bytes, what: str) -> int:
    if len(frame) != 8:
        raise ProtocolError(f"v3 {what} must be an 8-byte little-endian integer, got "
                            f"{len(frame)} bytes")
    return _U64.unpack(frame)[0]


def _sizes_header(size_frame: bytes, header: bytes, what: str) -> np.ndarray:
    n = _u64(size_frame, f"{what} header size")
    if n != len(header) or n % 8:
        raise ProtocolError(f"v3 {what} header must be {n} bytes of u64s, got {len(header)}")
    return np.frombuffer(header, np.dtype("<u8"))


def _text(frame: bytes, what: str, cap: int) -> str:
    try:
        s = frame.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"v3 {what} is not valid UTF-8: {e}") from None
    if len(s) > cap:
        raise ProtocolError(f"v3 {what} is longer than {cap} characters")
    return s


def looks_like_v3(frames: Sequence[Any]) -> bool:
    """Whether a message that is not this project's protocol is an original container's
    (an empty delimiter, then a u32 message type): worth a hint in the native port's log."""
    try:
        return (len(frames) >= 2 and len(frames[0]) == 0 and len(frames[1]) == 4
                and _U32.unpack(bytes(frames[1]))[0] in (0, 1, 2))
    except (TypeError, struct.error):
        return False


def decode_from_container(frames: Sequence[Any],
                          limits: Limits = DEFAULT_LIMITS) -> FromContainer:
    """Decode what a v3 container sent (the frames after the routing identity).

    Raises :class:`ProtocolError`, and nothing else, for anything malformed."""
    f = _frames(frames, limits)
    t = _u32(f[1], "message type")
    if t == MessageType.HEARTBEAT:
        if len(f) != 2:
            raise ProtocolError(f"a v3 container heartbeat has 2 frames, got {len(f)}")
        return ContainerHeartbeat()
    if t == MessageType.NEW_CONTAINER:
        if len(f) != 6:
            raise ProtocolError(f"v3 container metadata has 6 frames, got {len(f)}")
        name = _text(f[2], "model name", limits.max_name_chars)
        version = _text(f[3], "model version", limits.max_name_chars)
        code = _text(f[4], "input type code", 8)
        if not code.isdigit() or int(code) not in TYPE_OF:
            raise ProtocolError(f"v3 input type code must be one of 0-4 (bytes, ints, floats, "
                                f"doubles, strings), got {code!r}")
        return ContainerMetadata(name, version, TYPE_OF[int(code)], _u32(f[5], "RPC version"))
    if t == MessageType.CONTAINER_CONTENT:
        if len(f) < 5:
            raise ProtocolError(f"a v3 predict response has at least 5 frames, got {len(f)}")
        msg_id = _u32(f[2], "message id")
        header = _sizes_header(f[3], f[4], "response")
        if len(header) < 1 or int(header[0]) != len(header) - 1:
            raise ProtocolError("v3 response header must hold the number of outputs, then "
                                "one size per output")
        n = int(header[0])
        if n > limits.max_batch:
            raise ProtocolError(f"v3 response of {n} outputs is over the limit")
        outs = f[5:]
        if len(outs) != n:
            raise ProtocolError(f"v3 response declares {n} outputs and carries {len(outs)}")
        sizes = header[1:].tolist()
        for i, (o, size) in enumerate(zip(outs, sizes)):
            if len(o) != size:
                raise ProtocolError(f"v3 output {i} declares {size} bytes and has {len(o)}")
        return PredictResponse(msg_id, [_text(o, f"output {i}", limits.max_payload_bytes)
                                        for i, o in enumerate(outs)])
    raise ProtocolError(f"unknown v3 message type {t}; expected 0 (new container), "
                        "1 (container content) or 2 (heartbeat)")


def decode_from_frontend(frames: Sequence[Any],
                         limits: Limits = DEFAULT_LIMITS) -> ToContainer:
    """Decode what a v3 frontend sent (what a container receives); the inverse of
    :func:`encode` for :class:`Heartbeat` and :class:`PredictRequest`."""
    f = _frames(frames, limits)
    if len(f) < 3:
        raise ProtocolError(f"a v3 frontend message has at least 4 frames, got {len(f)}")
    version = _u32(f[1], "RPC version")
    if version != RPC_VERSION:
        raise ProtocolError(f"RPC version {version} is not supported; this side speaks "
                            f"{RPC_VERSION}")
    t = _u32(f[2], "message type")
    if t == MessageType.HEARTBEAT:
        if len(f) != 4:
            raise ProtocolError(f"a v3 frontend heartbeat has 4 frames, got {len(f)}")
        kind = _u32(f[3], "heartbeat type")
        if kind not in (0, 1):
            raise ProtocolError(f"unknown v3 heartbeat type {kind}")
        return Heartbeat(HeartbeatType(kind))
    if t != MessageType.CONTAINER_CONTENT:
        raise ProtocolError(f"a v3 frontend sends heartbeats and container content, got "
                            f"message type {t}")
    if len(f) < 7:
        raise ProtocolError(f"a v3 predict request has at least 7 frames, got {len(f)}")
    msg_id = _u32(f[3], "message id")
    if _u32(f[4], "request type") != RequestType.PREDICT:
        raise ProtocolError("only v3 predict requests are supported")
    header = _sizes_header(f[5], f[6], "request")
    if len(header) < 2 or int(header[0]) not in TYPE_OF or int(header[1]) != len(header) - 2:
        raise ProtocolError("v3 request header must hold the input type code, the number "
                            "of inputs, then one size per input")
    input_type = TYPE_OF[int(header[0])]
    parts = f[7:]
    if len(parts) != int(header[1]):
        raise ProtocolError(f"v3 request declares {int(header[1])} inputs and carries "
                            f"{len(parts)}")
    inputs: list = []
    for i, (p, size) in enumerate(zip(parts, header[2:].tolist())):
        if len(p) != size:
            raise ProtocolError(f"v3 input {i} declares {size} bytes and has {len(p)}")
        if input_type == "strings":
            inputs.append(_text(p, f"input {i}", limits.max_payload_bytes))
        else:
            dt = _DTYPES[input_type]
            if len(p) % dt.itemsize:
                raise ProtocolError(f"v3 input {i} of {len(p)} bytes is not a whole number of "
                                    f"{input_type}")
            arr = np.frombuffer(p, dt)
            inputs.append(p if input_type == "bytes" else arr)
    return PredictRequest(msg_id, input_type, inputs)
