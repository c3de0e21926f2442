"""What each framework runtime needs and accepts: one table, read by the runtimes (which
load and serve the artifact), by the management API (which validates a deploy before it
starts anything) and by the deployers.

This module imports no framework: the frontend reads it whether or not the frameworks are
installed.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

NUMERIC = ("ints", "floats", "doubles")


@dataclass(frozen=True)
class Framework:
    name: str
    #: ``pip install 'clipper-serving[EXTRA]'`` installs what the runtime imports
    extra: str
    #: top-level modules the runtime imports (checked before a local replica starts)
    modules: tuple
    #: artifact formats (file extensions) the runtime loads; the first is the default
    formats: tuple
    #: values of the ``method`` option; the first is the default
    methods: tuple
    #: the app input types the runtime accepts
    input_types: tuple = NUMERIC
    #: dtype of the batch handed to the framework unless the ``dtype`` option says otherwise
    #: (None: the model's own input type where the artifact declares one)
    default_dtype: str | None = "float64"

    @property
    def module(self) -> str:
        """The runtime's package: ``python -m model_runtimes.<module>``."""
        return self.name

    def install_hint(self) -> str:
        return f"pip install 'clipper-serving[{self.extra}]'"


FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework("sklearn", "sklearn", ("sklearn", "joblib"), ("joblib",),
              ("predict", "predict_proba", "predict_log_proba", "decision_function",
               "transform", "score_samples"),
              input_types=NUMERIC + ("strings",)),
    Framework("xgboost", "xgboost", ("xgboost",), ("json", "ubj"),
              ("predict", "predict_proba", "predict_margin")),
    Framework("lightgbm", "lightgbm", ("lightgbm",), ("txt",),
              ("predict", "predict_proba", "predict_raw")),
    Framework("onnx", "onnx", ("onnxruntime",), ("onnx",), ("run",), default_dtype=None),
    Framework("pytorch", "pytorch", ("torch",), ("pt", "pt2"), ("forward",),
              default_dtype="float32"),
)}

DTYPES = ("float32", "float64", "int32", "int64")

#: option -> what it holds (for messages)
OPTIONS = {
    "method": "the model method to call",
    "input_shape": "the shape of one input, e.g. [1, 28, 28] (-1 once for 'the rest')",
    "dtype": f"the dtype of the batch handed to the model, one of {', '.join(DTYPES)}",
    "input": "the ONNX graph input to feed (default: its first input)",
    "output": "the output to return: an ONNX output name, or an index into a tuple output",
    "classes": "class labels in the model's order, for a bare LightGBM booster's predict",
}


def get(framework: Any) -> Framework:
    """The framework called ``framework``; ValueError naming the known ones otherwise."""
    fw = FRAMEWORKS.get(framework) if isinstance(framework, str) else None
    if fw is None:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    return fw


def missing_modules(fw: Framework) -> list[str]:
    """The modules of ``fw`` that this Python cannot import."""
    return [m for m in fw.modules if importlib.util.find_spec(m) is None]


def missing_message(fw: Framework, missing: list[str]) -> str:
    return (f"the {fw.name} runtime needs the Python package(s) {', '.join(missing)}, which "
            f"are not installed where its replicas run; install the extra: "
            f"{fw.install_hint()}")


def check_options(fw: Framework, input_type: str, artifact_format: str,
                  options: Any) -> dict:
    """Validate a deploy's runtime options; returns them with defaults filled in.
    Raises ValueError saying what was expected."""
    if input_type not in fw.input_types:
        raise ValueError(f"the {fw.name} runtime takes input_type {', '.join(fw.input_types)}, "
                         f"got {input_type!r}")
    if artifact_format not in fw.formats:
        raise ValueError(f"the {fw.name} runtime loads {', '.join(fw.formats)} artifacts, got "
                         f"format {artifact_format!r}")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a JSON object, got {type(options).__name__}")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(map(str, unknown)))}; expected "
                         f"some of {', '.join(OPTIONS)}")
    out = dict(options)
    method = out.setdefault("method", fw.methods[0])
    if method not in fw.methods:
        raise ValueError(f"the {fw.name} runtime's method must be one of "
                         f"{', '.join(fw.methods)}, got {method!r}")
    shape = out.get("input_shape")
    if shape is not None:
        if (not isinstance(shape, list) or not shape
                or any(isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != -1)
                       for d in shape) or shape.count(-1) > 1):
            raise ValueError("input_shape must be a non-empty list of positive integers with "
                             f"at most one -1, got {shape!r}")
        if input_type not in NUMERIC:
            raise ValueError(f"input_shape needs a numeric input_type, not {input_type!r}")
    dtype = out.get("dtype", fw.default_dtype)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out["dtype"] = dtype
    for name in ("input",):
        if name in out and not isinstance(out[name], str):
            raise ValueError(f"option {name!r} must be a string, got {out[name]!r}")
    if "output" in out and (isinstance(out["output"], bool)
                            or not isinstance(out["output"], (str, int))):
        raise ValueError(f"option 'output' must be a name or an index, got {out['output']!r}")
    classes = out.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or len(classes) < 2 or not all(
                isinstance(c, (str, int, float)) and not isinstance(c, bool)
                and not (isinstance(c, float) and not math.isfinite(c)) for c in classes):
            raise ValueError("classes must be a list of at least two labels (strings or "
                             f"numbers), got {classes!r}")
    return out
