"""``deploy_lightgbm_model``: a LightGBM booster saved in its text format."""

from __future__ import annotations

from typing import Any

from ._common import deploy_bytes, deploy_file, is_path


def deploy_lightgbm_model(conn, name: str, version: Any, input_type: str, model: Any, *,
                          method: str = "predict", **kw: Any) -> dict:
    """Deploy ``model``: an ``LGBMClassifier`` / ``LGBMRegressor`` / ``Booster`` or a path to
    a saved ``.txt`` model.  ``method``: predict (labels for a classifier, from its
    ``classes_``), predict_proba, or predict_raw (raw scores).  A bare booster's predict
    answers what ``Booster.predict`` does unless ``classes=[...]`` is given."""
    kw["method"] = method
    if is_path(model):
        return deploy_file(conn, "lightgbm", name, version, input_type, model,
                           artifact_format="txt", **kw)
    booster = getattr(model, "booster_", model)  # the scikit-learn API wraps a Booster
    classes = getattr(model, "classes_", None)
    if classes is not None and "classes" not in kw:
        kw["classes"] = classes.tolist()
    data = booster.model_to_string().encode()
    return deploy_bytes(conn, "lightgbm", name, version, input_type, data, "txt", kw)
