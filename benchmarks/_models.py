"""The models the benchmark scenarios deploy, built from a scenario's ``[[models]]`` table.

Every factory returns ``(predict, input)``: a batch function (a list of inputs in, one
JSON-native output per input out, as ``deploy_python_closure`` takes it) and the input the
load generator sends. ``deploy_python_closure`` pickles the function by value (this module is
not installed), so the container needs nothing from ``benchmarks/``; the scikit-learn model
needs scikit-learn in the container's Python, which is the one running the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

Predict = Callable[[list], Sequence[Any]]

SKLEARN_HINT = (
    "needs scikit-learn, which is not a dependency of Clipper: install it with "
    "`make bench-deps` (or `.venv/bin/pip install -e '.[bench]'`, or `pip install scikit-learn`)"
)


class ScenarioError(ValueError):
    """A scenario file the runner cannot run."""


def noop(inputs: list) -> list:
    return [0] * len(inputs)


def total(inputs: list) -> list:
    return [float(x.sum()) for x in inputs]


def fixed_cost(base_ms: float, per_item_ms: float, cost: str) -> Predict:
    """A model whose batch of ``n`` takes ``base_ms + n * per_item_ms``: ``sleep`` stands for
    an accelerator (latency, no host CPU), ``spin`` for a CPU-bound model (busy-waits)."""
    if cost not in ("sleep", "spin"):
        raise ScenarioError(f"fixed_cost model: cost must be 'sleep' or 'spin', got {cost!r}")
    if base_ms < 0 or per_item_ms < 0:
        raise ScenarioError("fixed_cost model: base_ms and per_item_ms must be >= 0")

    def predict(inputs: list) -> list:
        seconds = (base_ms + per_item_ms * len(inputs)) / 1e3
        if cost == "sleep":
            time.sleep(seconds)
        else:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        return [float(x.sum()) for x in inputs]

    return predict


def sklearn_model(estimator: str) -> Predict:
    """A classifier trained here on the iris toy data set (shipped inside scikit-learn)."""
    try:
        import numpy as np
        from sklearn.datasets import load_iris
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ScenarioError(f"the 'sklearn' model {SKLEARN_HINT}") from None
    X, y = load_iris(return_X_y=True)
    if estimator == "logistic_regression":
        clf = LogisticRegression(max_iter=500).fit(X, y)
    elif estimator == "random_forest":
        clf = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0).fit(X, y)
    else:
        raise ScenarioError(
            f"sklearn model: estimator must be 'logistic_regression' or 'random_forest', got {estimator!r}")

    def predict(inputs: list) -> list:
        return [int(c) for c in clf.predict(np.vstack(inputs))]

    return predict


#: kind -> the input sent when the scenario gives none (iris has four features)
_DEFAULT_INPUT = {"noop": [1.0, 2.0, 3.0], "sum": [1.0, 2.0, 3.0], "fixed_cost": [1.0, 2.0, 3.0],
                  "sklearn": [5.1, 3.5, 1.4, 0.2]}


def build(spec: dict[str, Any]) -> tuple[Predict, list]:
    """``(predict, input)`` from a ``[[models]]`` table such as ``{kind = "sum"}``."""
    kind = spec.get("kind")
    params = {k: v for k, v in spec.items() if k not in ("kind", "name", "input", "batch_size")}
    if kind == "noop":
        fn: Predict = noop
    elif kind == "sum":
        fn = total
    elif kind == "fixed_cost":
        fn = fixed_cost(float(params.pop("base_ms", 1.0)), float(params.pop("per_item_ms", 0.0)),
                        str(params.pop("cost", "sleep")))
    elif kind == "sklearn":
        fn = sklearn_model(str(params.pop("estimator", "logistic_regression")))
    else:
        raise ScenarioError(f"model kind must be one of {', '.join(_DEFAULT_INPUT)}, got {kind!r}")
    if params:
        raise ScenarioError(f"model {kind!r} does not take {', '.join(sorted(params))}")
    value = spec.get("input", _DEFAULT_INPUT[kind])
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ScenarioError(f"model {kind!r}: input must be a non-empty list of numbers, got {value!r}")
    return fn, [float(v) for v in value]
