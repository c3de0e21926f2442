"""``deploy_xgboost_model``: an XGBoost model saved in its JSON (or UBJSON) format."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

from ._common import deploy_bytes, deploy_file, is_path

#: XGBModel.save_model sets, saves and clears an attribute on the shared booster: two threads
#: saving one model at once could write a file without the scikit-learn metadata
_save_lock = threading.Lock()


def deploy_xgboost_model(conn, name: str, version: Any, input_type: str, model: Any, *,
                         method: str = "predict", artifact_format: str = "json",
                         **kw: Any) -> dict:
    """Deploy ``model``: an ``XGBClassifier`` / ``XGBRegressor`` / ``Booster`` or a path to
    a saved ``.json`` / ``.ubj`` model.  ``method``: predict (labels for a classifier),
    predict_proba, or predict_margin (raw margins)."""
    kw["method"] = method
    if is_path(model):
        return deploy_file(conn, "xgboost", name, version, input_type, model, **kw)
    if artifact_format not in ("json", "ubj"):
        raise ValueError(f"artifact_format must be json or ubj, got {artifact_format!r}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"model.{artifact_format}")
        with _save_lock:
            model.save_model(path)
        with open(path, "rb") as f:
            data = f.read()
    return deploy_bytes(conn, "xgboost", name, version, input_type, data, artifact_format, kw)
