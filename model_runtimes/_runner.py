"""What every framework runtime shares: the command line, the device rule, turning a batch of
inputs into one array and the framework's answer into one JSON value per input.

A runtime module defines ``load(path, fmt, options, device) -> predict`` where ``predict``
takes the whole batch as one array (or a list of strings) and returns one array, or one list,
with a row per input.  The framework is called once per batch.  ``load`` may fill in the
``dtype`` and ``input_shape`` options from what the artifact declares (ONNX does).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable

import numpy as np

from clipper_rpc import Model, serve_model

from . import frameworks
from ._cli import replica_parser, setup_logging

log = logging.getLogger("clipper.container")

Predict = Callable[[Any], Any]


def device() -> str:
    """``cuda:0`` when Clipper gave this replica a GPU (``CUDA_VISIBLE_DEVICES`` names one;
    the replica then sees it as device 0), else ``cpu``.  Clipper sets the variable to ""
    for a replica without a GPU, so such a replica never tries one."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None or cvd.strip() in ("", "-1") or cvd.strip().lower() == "cpu":
        return "cpu"
    return "cuda:0"


def as_batch(inputs: list, input_type: str, dtype: str | None,
             shape: tuple | None) -> Any:
    """One array for the whole batch: inputs stacked row by row, cast to ``dtype``,
    each row reshaped to ``shape``.  Text inputs stay a list.

    Inputs of another length than the rest fail the whole batch (the protocol has no
    per-input error): their queries, and the others of that batch, get the default output."""
    if input_type not in frameworks.NUMERIC:
        return list(inputs)
    n = len(inputs)
    width = len(inputs[0])
    if any(len(x) != width for x in inputs):
        lengths = sorted({len(x) for x in inputs})
        raise ValueError(f"every input of a batch must have the same length; this batch has "
                         f"lengths {lengths[:5]}")
    # np.stack copies into a fresh (writable) array; one input is copied too, since the
    # decoded inputs are read-only views of the message buffer
    x = np.stack(inputs) if n > 1 else np.array(inputs[0], ndmin=2)
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    if shape is not None:
        try:
            x = x.reshape((n, *shape))
        except ValueError:
            raise ValueError(f"an input of {width} values cannot be reshaped to "
                             f"input_shape {list(shape)}") from None
    return x


def _json_value(v: Any) -> Any:
    if isinstance(v, dict):  # ONNX ZipMap: {label: probability}; JSON keys are strings
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def as_outputs(y: Any, n: int) -> list:
    """One JSON value per input from the framework's answer for the batch."""
    if isinstance(y, np.ndarray):
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"the model returned shape {list(y.shape)} for a batch of {n} "
                             f"inputs; expected {n} rows")
        return y.tolist()  # one C-level conversion for the whole batch
    y = list(y)
    if len(y) != n:
        raise ValueError(f"the model returned {len(y)} outputs for a batch of {n} inputs")
    return [_json_value(v) for v in y]


class FrameworkModel(Model):
    def __init__(self, predict: Predict, input_type: str, options: dict) -> None:
        self._predict = predict
        self._input_type = input_type
        self._dtype = options.get("dtype")
        shape = options.get("input_shape")
        self._shape = tuple(shape) if shape else None

    def predict(self, inputs: list) -> list:
        x = as_batch(inputs, self._input_type, self._dtype, self._shape)
        return as_outputs(self._predict(x), len(inputs))


def main(framework: str, load: Callable[[str, str, dict, str], Predict],
         argv: list[str] | None = None) -> int:
    fw = frameworks.get(framework)
    ap = replica_parser(fw.module)
    ap.add_argument("--artifact", required=True, help="the saved model file")
    ap.add_argument("--format", default=None, help=f"one of {', '.join(fw.formats)} "
                    "(default: the file's extension)")
    ap.add_argument("--options", default="{}", help="runtime options as a JSON object")
    args = ap.parse_args(argv)
    setup_logging()
    fmt = args.format or os.path.splitext(args.artifact)[1].lstrip(".")
    try:
        options = frameworks.check_options(fw, args.input_type, fmt, json.loads(args.options))
    except ValueError as e:
        log.error("bad runtime options: %s", e)
        return 2
    missing = frameworks.missing_modules(fw)
    if missing:
        log.error("%s", frameworks.missing_message(fw, missing))
        return 2
    dev = device()
    try:
        predict = load(args.artifact, fmt, options, dev)
    except Exception as e:
        log.exception("cannot load the %s model %s: %s", fw.name, args.artifact, e)
        return 2
    log.info("%s model %s:%s loaded from %s (%s, method %s, device %s)", fw.name,
             args.model_name, args.model_version, args.artifact, fmt, options["method"],
             getattr(predict, "device", dev))
    serve_model(FrameworkModel(predict, args.input_type, options),
                model_name=args.model_name, model_version=args.model_version,
                input_type=args.input_type, address=args.address)
    return 0


def run(framework: str, load: Callable[[str, str, dict, str], Predict]) -> None:
    sys.exit(main(framework, load))
