"""Open Inference Protocol v2 (the KServe / Triton / MLServer REST API) on the query port.

``{name}`` in the routes is a Clipper application, so its SLO, default output and model
selection apply; ``versions/{v}`` picks a version of the app's linked model.  An app has one
input tensor (``input``) and one output tensor (``output``):

====================  =======================  =============================================
app input_type        accepted datatypes       shape -> queries
====================  =======================  =============================================
``doubles``/``floats``  FP16, FP32, FP64         ``[N, M]``: N queries of M values; ``[M]``: one
``ints``              INT8..INT64, UINT8..64   same (values must fit in 32-bit signed ints)
``bytes``/``strings`` BYTES                    ``[N]`` or ``[N, 1]``: one element per query
====================  =======================  =============================================

Data comes as JSON (``"data"``, flat in row-major order or nested as the shape) or in the
binary tensor extension: a JSON header of ``Inference-Header-Content-Length`` bytes followed
by the raw tensor (``"parameters": {"binary_data_size": n}``; BYTES elements each prefixed by
a 4-byte little-endian length).  Outputs are encoded as one tensor: numbers as FP64 or INT64
(``[N]``, or ``[N, K]`` for lists of K numbers), booleans as BOOL, strings as BYTES holding
their UTF-8 text, anything else (objects, mixed answers) as BYTES holding JSON text, marked by
the output parameter ``content_type`` (``"str"`` or ``"json"``).  Clipper's fields travel in
the response ``parameters``: ``default``, ``default_count``, ``default_explanation``,
``model`` (``name:version`` of the first model that answered), ``models`` (every model that
answered, comma-separated: an app whose policy combines several models names them all),
``confidence`` (the lowest confidence of the answers that are not defaults), ``cache_hit``
(every answer came from the prediction cache) and ``cache_hits``.

Errors answer ``{"error": message, "code": clipper_error_code}`` with 400 (bad request or
tensor), 404 (unknown app or version), 413 (body too large) or 503 (no answer and no default;
or, with ``Retry-After``, refused by the edge before the body was read: the query waited too
long for the frontend, or the frontend holds too many requests; see :mod:`clipper_core.edge`).

The codec (:func:`decode_infer`, :func:`encode_output`, :func:`infer_response`) is sans-IO;
:class:`OipApi` holds the thin aiohttp handlers.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import numpy as np
import orjson
from aiohttp import web

from . import __version__
from .edge import ARRIVED, EDGE, query_route
from .config import AppConfig
from .errors import (BadRequest, ClipperError, InvalidInput, MalformedJSON, MissingField, brief,
                     UnknownVersion)
from .inputs import TARGET as _TARGET, check_range, describe, json_array
from .http import json_response, log_error, read_body
from .predict import MAX_BATCH_INPUTS

if TYPE_CHECKING:
    from .metrics import Metrics
    from .predict import Outcome, QueryProcessor

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "input"
OUTPUT_NAME = "output"

#: wire layout of each datatype in the binary extension (little-endian)
NP_DTYPES = {
    "BOOL": np.dtype("|b1"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOATS = ("FP16", "FP32", "FP64")
#: datatypes accepted per Clipper input type
ACCEPTED = {"ints": _INTS, "floats": _FLOATS, "doubles": _FLOATS, "bytes": ("BYTES",),
            "strings": ("BYTES",)}
#: the datatype an app declares in its metadata
DATATYPE_OF = {"ints": "INT32", "floats": "FP32", "doubles": "FP64", "bytes": "BYTES",
               "strings": "BYTES"}
_U32 = struct.Struct("<I")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: what the query processor receives, and how to answer."""

    inputs: list
    request_id: str | None = None
    timeout_ms: float | None = None
    binary_output: bool = False


# ---------------------------------------------------------------------------- decoding

def _expects(app: AppConfig) -> str:
    it = app.input_type
    shapes = "[N] or [N, 1]" if it in ("bytes", "strings") else "[M] or [N, M]"
    return f"input_type {it}: datatype {' or '.join(ACCEPTED[it])}, shape {shapes}"



def _split_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count, got {brief(header_length)}") \
            from None
    if not 0 < n <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {n}, but the request body holds {len(body)} "
                         "bytes; it must be the length of the JSON header, between 1 and that")
    return view[:n], view[n:]


def _shape(t: dict, name: str) -> list[int]:
    shape = t.get("shape")
    if (not isinstance(shape, list) or not shape
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)):
        raise InvalidInput(f"input {name!r} must have a 'shape': a non-empty list of "
                           f"non-negative integers, got {brief(shape)}")
    return shape


def decode_infer(body: bytes, header_length: str | None, app: AppConfig) -> InferRequest:
    """Decode an inference request for ``app`` into the inputs its model receives.

    Raises a :class:`BadRequest` subclass naming what was expected for anything malformed.
    """
    head, raw = _split_body(body, header_length)
    if not len(head):
        raise MalformedJSON("request body is empty; expected an inference request, a JSON "
                            "object with 'inputs'")
    try:
        req = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise MalformedJSON(f"inference request is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"inference request must be a JSON object, got {describe(req)}")
    tensors = req.get("inputs")
    if not isinstance(tensors, list):
        raise MissingField("inference request needs 'inputs', a list with one input tensor "
                           f"for app {app.name!r} ({_expects(app)})")
    if len(tensors) != 1:
        raise InvalidInput(f"app {app.name!r} takes exactly one input tensor ({_expects(app)}); "
                           f"the request has {len(tensors)}")
    t = tensors[0]
    if not isinstance(t, dict):
        raise InvalidInput(f"an input tensor must be a JSON object, got {describe(t)}")
    name = t.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"input tensor needs a 'name' (a string), got {describe(name)}")
    datatype = t.get("datatype")
    if datatype not in ACCEPTED[app.input_type]:
        raise InvalidInput(f"input {name!r} of app {app.name!r} must have datatype "
                           f"{' or '.join(ACCEPTED[app.input_type])} (input_type "
                           f"{app.input_type}), got {brief(datatype)}")
    shape = _shape(t, name)
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' of input {name!r} must be a JSON object")
    if any(k.startswith("shared_memory") for k in params):
        raise InvalidInput("shared-memory inputs are not supported; send the tensor in the "
                           "request body (JSON 'data' or binary)")
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"parameters.binary_data_size of input {name!r} must be a "
                               f"byte count, got {brief(size)}")
        if size != len(raw):
            raise InvalidInput(f"input {name!r} declares binary_data_size {size}, but "
                               f"{len(raw)} bytes follow the JSON header")
        data: Any = raw
        binary = True
    else:
        if len(raw):
            raise InvalidInput(f"{len(raw)} bytes follow the JSON header, but input {name!r} "
                               "declares no parameters.binary_data_size")
        if "data" not in t:
            raise MissingField(f"input {name!r} has neither 'data' nor "
                               "parameters.binary_data_size")
        data = t["data"]
        binary = False
    if app.input_type in _TARGET:
        inputs = _numeric_rows(app, name, datatype, shape, data, binary)
    else:
        inputs = _byte_elements(app, name, shape, data, binary)
    if len(inputs) > MAX_BATCH_INPUTS:
        raise InvalidInput(f"input {name!r} holds {len(inputs)} queries; at most "
                           f"{MAX_BATCH_INPUTS} are allowed per request")
    return _request_options(req, inputs)


def _request_options(req: dict, inputs: list) -> InferRequest:
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' of the inference request must be a JSON object")
    binary = params.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise BadRequest(f"parameters.binary_data_output must be a boolean, got {brief(binary)}")
    timeout_ms = params.get("timeout_ms")
    if timeout_ms is None and "timeout" in params:  # Triton's: microseconds
        us = params["timeout"]
        if isinstance(us, bool) or not isinstance(us, (int, float)) or us <= 0:
            raise InvalidInput(f"parameters.timeout must be a positive number of "
                               f"microseconds, got {brief(us)}")
        timeout_ms = us / 1e3
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or len(outputs) > 1:
            raise BadRequest(f"'outputs' must be a list naming at most the one output "
                             f"{OUTPUT_NAME!r}, got {brief(outputs)}"[:300])
        for o in outputs:
            oname = o.get("name") if isinstance(o, dict) else None
            if oname != OUTPUT_NAME:
                raise BadRequest(f"an app has one output, {OUTPUT_NAME!r}; the request asks "
                                 f"for {brief(oname)}")
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise BadRequest(f"'parameters' of output {OUTPUT_NAME!r} must be an object")
            if op.get("classification"):
                raise BadRequest("the classification extension is not supported")
            if any(k.startswith("shared_memory") for k in op):
                raise BadRequest("shared-memory outputs are not supported")
            b = op.get("binary_data", binary)
            if not isinstance(b, bool):
                raise BadRequest(f"parameters.binary_data of output {OUTPUT_NAME!r} must be "
                                 f"a boolean, got {brief(b)}")
            binary = b
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest(f"'id' of the inference request must be a string, got {describe(rid)}")
    return InferRequest(inputs, rid, timeout_ms, binary)


def _numeric_rows(app: AppConfig, name: str, datatype: str, shape: list, data: Any,
                  binary: bool) -> list:
    if len(shape) not in (1, 2):
        raise InvalidInput(f"input {name!r} of app {app.name!r} must have shape [M] (one query "
                           f"of M values) or [N, M] (N queries), got {shape}")
    if 0 in shape:
        raise InvalidInput(f"input {name!r} of app {app.name!r} has shape {shape}; every query "
                           "needs at least one value")
    count = math.prod(shape)
    if binary:
        dt = NP_DTYPES[datatype]
        if len(data) != count * dt.itemsize:
            raise InvalidInput(f"input {name!r} of shape {shape} and datatype {datatype} needs "
                               f"{count * dt.itemsize} bytes of binary data, got {len(data)}")
        arr = np.frombuffer(data, dt)
    else:
        ints = datatype in _INTS
        what = "integers" if ints else "numbers"
        if not isinstance(data, list):
            raise InvalidInput(f"'data' of input {name!r} must be a list of {what} (flat in "
                               f"row-major order, or nested as the shape), got "
                               f"{describe(data)}")
        where = f"'data' of input {name!r} (datatype {datatype})"
        arr = json_array(data, app.input_type, where, integers=ints)
        if arr.size != count:
            raise InvalidInput(f"input {name!r} has shape {shape}, which needs {count} values; "
                               f"'data' holds {arr.size}")
    check_range(arr, app.input_type, f"input {name!r} of app {app.name!r}")
    arr = arr.astype(_TARGET[app.input_type], copy=False).reshape(shape)
    return [arr] if arr.ndim == 1 else list(arr)


def _flatten(data: list, depth: int, name: str) -> list:
    if all(isinstance(x, str) for x in data):
        return data
    out: list = []

    def walk(xs: list, level: int) -> None:
        for x in xs:
            if isinstance(x, list):
                if level >= depth:
                    raise InvalidInput(f"'data' of input {name!r} is nested deeper than its "
                                       f"shape ({depth} dimensions)")
                walk(x, level + 1)
            elif isinstance(x, str):
                out.append(x)
            else:
                raise InvalidInput(f"'data' of BYTES input {name!r} must hold strings, got "
                                   f"{describe(x)}")

    walk(data, 1)
    return out


def unpack_bytes(buf: Any, count: int, name: str = INPUT_NAME) -> list[bytes]:
    """Split the binary form of a BYTES tensor: ``count`` elements, each a 4-byte
    little-endian length followed by that many bytes, with nothing left over."""
    view = memoryview(buf)
    end = len(view)
    pos = 0
    out = []
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"binary data of BYTES input {name!r} ends before element {i} "
                               f"of {count} (each element is a 4-byte little-endian length, "
                               "then the bytes)")
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInput(f"element {i} of BYTES input {name!r} declares {n} bytes, but "
                               f"only {end - pos} remain")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    if pos != end:
        raise InvalidInput(f"binary data of BYTES input {name!r} holds {end - pos} bytes after "
                           f"the {count} elements its shape declares")
    return out


def pack_bytes(items: list[bytes]) -> bytes:
    """Inverse of :func:`unpack_bytes`."""
    parts = []
    for b in items:
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def _byte_elements(app: AppConfig, name: str, shape: list, data: Any, binary: bool) -> list:
    if any(d != 1 for d in shape[1:]):
        raise InvalidInput(f"BYTES input {name!r} of app {app.name!r} must have shape [N] or "
                           f"[N, 1] (one element per query), got {shape}")
    count = shape[0]
    if count == 0:
        raise InvalidInput(f"input {name!r} of app {app.name!r} has shape {shape}; it needs "
                           "at least one element")
    if binary:
        items = unpack_bytes(data, count, name)
        if app.input_type == "bytes":
            return items
        out = []
        for i, b in enumerate(items):
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise InvalidInput(f"element {i} of input {name!r} is not valid UTF-8 (app "
                                   f"{app.name!r} has input_type strings): {e}") from None
        return out
    if not isinstance(data, list):
        raise InvalidInput(f"'data' of BYTES input {name!r} must be a list of strings, got "
                           f"{describe(data)}")
    items = _flatten(data, len(shape), name)
    if len(items) != count:
        raise InvalidInput(f"input {name!r} has shape {shape}, which needs {count} elements; "
                           f"'data' holds {len(items)}")
    if app.input_type == "bytes":
        return [s.encode("utf-8") for s in items]
    return items


# ---------------------------------------------------------------------------- encoding

@dataclass(frozen=True)
class OutputTensor:
    datatype: str
    shape: list
    #: numpy array (numeric and BOOL) or list of bytes (BYTES)
    values: Any
    content_type: str | None = None

    def json_data(self) -> Any:
        if self.datatype == "BYTES":
            return [b.decode("utf-8") for b in self.values]
        return self.values.ravel()

    def raw(self) -> bytes:
        if self.datatype == "BYTES":
            return pack_bytes(self.values)
        return self.values.tobytes()


def encode_output(values: list) -> OutputTensor:
    """One tensor of ``len(values)`` rows from the JSON-native answers of a request."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None:
        kind = arr.dtype.kind
        if kind == "b":
            return OutputTensor("BOOL", list(arr.shape), arr)
        # numpy turns a True among numbers into 1, and an int beyond int64 into a float:
        # such answers go as JSON
        if kind in "if" and not any(type(v) is bool or (type(v) is int and not
                                                         _I64_MIN <= v <= _I64_MAX)
                                    for v in values):
            if kind == "i":
                return OutputTensor("INT64", list(arr.shape), arr.astype("<i8", copy=False))
            return OutputTensor("FP64", list(arr.shape), arr.astype("<f8", copy=False))
        if kind == "U" and arr.ndim == 1 and all(type(v) is str for v in values):
            return OutputTensor("BYTES", [len(values)], [v.encode("utf-8") for v in values],
                                "str")
    return OutputTensor("BYTES", [len(values)],
                        [orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) for v in values],
                        "json")


def clipper_parameters(outcomes: "list[Outcome]") -> dict:
    """Clipper's answer fields for the response ``parameters`` (scalars only, as OIP asks)."""
    defaults = [o for o in outcomes if o.default]
    params: dict = {"default": bool(defaults)}
    if defaults:
        params["default_count"] = len(defaults)
        params["default_explanation"] = defaults[0].explanation or ""
    models = list(dict.fromkeys(m for o in outcomes for m in o.models))
    if models:
        params["model"] = models[0]
        params["models"] = ",".join(models)
    answers = [o.confidence for o in outcomes if not o.default]
    if answers:
        params["confidence"] = min(answers)
    params["cache_hit"] = all(o.cache_hit for o in outcomes)
    params["cache_hits"] = sum(1 for o in outcomes if o.cache_hit)
    return params


def infer_response(app_name: str, version: str | None, req: InferRequest,
                   outcomes: "list[Outcome]",
                   answered: Callable[[str], None] | None = None) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when the output is binary;
    ``answered`` is told the output's datatype."""
    out = encode_output([o.output for o in outcomes])
    if answered is not None:
        answered(out.datatype)
    tensor: dict = {"name": OUTPUT_NAME, "datatype": out.datatype, "shape": out.shape}
    tparams: dict = {}
    if out.content_type:
        tparams["content_type"] = out.content_type
    raw = None
    if req.binary_output:
        raw = out.raw()
        tparams["binary_data_size"] = len(raw)
    else:
        tensor["data"] = out.json_data()
    if tparams:
        tensor["parameters"] = tparams
    params = clipper_parameters(outcomes)
    model = params.get("model")
    resp: dict = {"model_name": app_name}
    if model and params["models"] == model:  # one model answered: its version
        resp["model_version"] = model.rpartition(":")[2]
    elif version is not None:
        resp["model_version"] = version
    if req.request_id is not None:
        resp["id"] = req.request_id
    resp["parameters"] = params
    resp["outputs"] = [tensor]
    head = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY)
    if raw is None:
        return head, None
    return head + raw, len(head)


# ---------------------------------------------------------------------------- health

def app_problems(proc: "QueryProcessor", app: AppConfig, version: str | None = None) -> list:
    """Why ``app`` cannot answer from a model now (empty when it can): each linked model's
    current version (or ``version`` of the first, which serves the versioned routes) needs a
    connected replica that is not suspect."""
    reg = proc.registry
    links = reg.links.get(app.name) or []
    if not links:
        return [f"app {app.name!r} has no linked model"]
    if version is not None:
        reg.get_model(links[0], version)  # UnknownVersion names the versions
        wanted = [(links[0], version)]
    else:
        wanted = [(m, reg.current.get(m)) for m in links]
    problems = []
    for model, v in wanted:
        if v is None:
            problems.append(f"model {model!r} of app {app.name!r} has no current version")
            continue
        mq = proc.scheduler.models.get((model, v))
        if mq is None or not mq.healthy_replicas():
            problems.append(f"model {model}:{v} of app {app.name!r} has no connected replica "
                            "that answers")
    return problems


# ---------------------------------------------------------------------------- handlers

def _oip_errors(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable:
    """OIP's error shape: ``{"error": message}`` (plus Clipper's ``code``)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ClipperError as e:
            status = 404 if isinstance(e, UnknownVersion) else e.status
            log_error(request, e, status)
            return json_response({"error": e.cause, "code": e.code}, status, e.headers or None)
        except RecursionError:  # a body nested deep enough to exhaust the stack somewhere
            return json_response({"error": "the request body is nested too deeply",
                                  "code": "bad_request"}, 400)

    return wrapped


class OipApi:
    """The v2 routes of one query frontend."""

    #: responses at least this large are compressed when the client accepts it
    COMPRESS_MIN_BYTES = 4096

    def __init__(self, proc: "QueryProcessor", metrics: "Metrics") -> None:
        self.proc = proc
        self.metrics = metrics
        #: per app, the datatype its latest answer from a model had (what metadata declares)
        self._answered: dict[str, str] = {}

    def output_datatype(self, app: AppConfig) -> str:
        """The output datatype ``/infer`` answers ``app`` with: the one its models' latest
        answer had; before any, the default output's."""
        seen = self._answered.get(app.name)
        if seen is not None:
            return seen
        return (encode_output([app.default_output]).datatype
                if app.default_output is not None else "BYTES")

    def _learn(self, name: str, outcomes: "list[Outcome]") -> Callable[[str], None] | None:
        if any(o.default for o in outcomes):
            return None  # a default says nothing about what the models answer
        if len(self._answered) > 10_000 and name not in self._answered:
            self._answered.clear()  # apps come and go; never grow without bound

        def answered(datatype: str) -> None:
            self._answered[name] = datatype

        return answered

    def routes(self) -> list[web.RouteDef]:
        m = "/v2/models/{name}"
        mv = "/v2/models/{name}/versions/{version}"
        e = _oip_errors
        return [
            web.get("/v2", e(self.server_metadata)),
            web.get("/v2/health/live", e(self.live)),
            web.get("/v2/health/ready", e(self.ready)),
            web.get(m, e(self.model_metadata)),
            web.get(mv, e(self.model_metadata)),
            web.get(m + "/ready", e(self.model_ready)),
            web.get(mv + "/ready", e(self.model_ready)),
            web.post(m + "/infer", query_route(e(self.infer))),
            web.post(mv + "/infer", query_route(e(self.infer))),
        ]

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "clipper", "version": __version__,
                              "extensions": ["binary_tensor_data", "parameters"]})

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """Server-wide readiness, for a load balancer: this frontend is worth sending queries
        to while at least one app can answer from a model (or no app waits for one).  An app
        whose models have no replica still gets its answers (the default output) and is
        listed under ``not_ready``; ``/v2/models/{app}/ready`` stays strict per app."""
        reg = self.proc.registry
        not_ready: dict[str, list] = {}
        serving = 0
        for app in list(reg.apps.values()):
            if not reg.links.get(app.name):  # an app without a model waits for nothing
                continue
            problems = app_problems(self.proc, app)
            if problems:
                not_ready[app.name] = problems
            else:
                serving += 1
        if not_ready and not serving:
            problems = [p for ps in not_ready.values() for p in ps]
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            return json_response({"ready": False, "error": "not ready: no app can answer "
                                  "from a model: " + "; ".join(problems[:5]) + more}, 503)
        body: dict = {"ready": True}
        if not_ready:
            body["not_ready"] = {name: "; ".join(ps) for name, ps in not_ready.items()}
        return json_response(body)

    async def model_ready(self, request: web.Request) -> web.Response:
        app = self.proc.registry.get_app(request.match_info["name"])
        problems = app_problems(self.proc, app, request.match_info.get("version"))
        if problems:
            return json_response({"name": app.name, "ready": False,
                                  "error": "not ready: " + "; ".join(problems)}, 503)
        return json_response({"name": app.name, "ready": True})

    async def model_metadata(self, request: web.Request) -> web.Response:
        reg = self.proc.registry
        app = reg.get_app(request.match_info["name"])
        links = reg.links.get(app.name) or []
        versions = reg.versions(links[0]) if links else []
        version = request.match_info.get("version")
        if version is not None:
            if not links:
                raise UnknownVersion(f"app {app.name!r} has no linked model, so no version "
                                     f"{brief(version)}")
            reg.get_model(links[0], version)
        numeric = app.input_type in _TARGET
        out_type = self.output_datatype(app)
        meta = {
            "name": app.name,
            "versions": [version] if version is not None else versions,
            "platform": "clipper",
            "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE_OF[app.input_type],
                        "shape": [-1, -1] if numeric else [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": out_type, "shape": [-1]}],
            "parameters": {"input_type": app.input_type,
                           "latency_slo_micros": app.slo_micros, "policy": app.policy,
                           "models": ",".join(links)},
        }
        if links and links[0] in reg.current:
            meta["parameters"]["model"] = f"{links[0]}:{version or reg.current[links[0]]}"
        return json_response(meta)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        version = request.match_info.get("version")
        app = self.proc.registry.get_app(name)  # 404 before reading the body
        # refused before the body is read (503 with Retry-After: the number of queries, and
        # so the shape of a default answer, is only known from the parsed body)
        request.app[EDGE].admit(request, app)
        req = decode_infer(await read_body(request), request.headers.get(HEADER_LENGTH), app)
        outcomes = await self.metrics.track(
            name, len(req.inputs),
            self.proc.predict(name, req.inputs, version=version, timeout_ms=req.timeout_ms,
                              parsed=True, arrival=request.get(ARRIVED)))
        body, header_len = infer_response(name, version, req, outcomes,
                                          self._learn(name, outcomes))
        if header_len is None:
            resp = web.Response(body=body, content_type="application/json")
        else:
            resp = web.Response(body=body, content_type="application/octet-stream",
                                headers={HEADER_LENGTH: str(header_len)})
        if len(body) >= self.COMPRESS_MIN_BYTES and "Accept-Encoding" in request.headers:
            resp.enable_compression()
        return resp
