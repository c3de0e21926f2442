"""``deploy_sklearn_model``: a fitted scikit-learn estimator or pipeline, saved with joblib.

The estimator's classes must be importable where the replicas run (scikit-learn's own are;
a transformer defined in a notebook is not: deploy that one as a Python closure)."""

from __future__ import annotations

import io
from typing import Any

from ._common import deploy_bytes, deploy_file, is_path


def deploy_sklearn_model(conn, name: str, version: Any, input_type: str, model: Any, *,
                         method: str = "predict", **kw: Any) -> dict:
    """Deploy ``model`` (fitted, or a path to a ``.joblib`` file).  ``method``: predict,
    predict_proba, predict_log_proba, decision_function, transform or score_samples.
    Other keywords: num_replicas, batch_size, gpus, labels, warmup_input, ready_timeout_s,
    and the runtime options input_shape and dtype."""
    kw["method"] = method
    if is_path(model):
        return deploy_file(conn, "sklearn", name, version, input_type, model,
                           artifact_format="joblib", **kw)
    import joblib

    if not callable(getattr(model, method, None)):
        raise ValueError(f"{type(model).__name__} has no method {method!r}")
    buf = io.BytesIO()
    joblib.dump(model, buf)
    return deploy_bytes(conn, "sklearn", name, version, input_type, buf.getvalue(), "joblib",
                        kw)
