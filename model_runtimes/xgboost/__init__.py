"""XGBoost runtime: serves a model saved in XGBoost's JSON or UBJSON format.

A model saved from the scikit-learn API (``XGBClassifier.save_model``) is loaded back into
that class, so ``predict`` gives labels and ``predict_proba`` probabilities exactly as the
estimator did; a bare ``Booster`` answers ``predict`` with ``inplace_predict``.
``predict_margin`` returns raw margins.
"""

from __future__ import annotations

import json


def load(path: str, fmt: str, options: dict, device: str):
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(path)
    try:
        skl = json.loads(booster.attr("scikit_learn") or "null") or {}
    except ValueError:
        skl = {}
    kind = skl.get("_estimator_type")
    method = options["method"]
    if kind in ("classifier", "regressor"):
        est = xgb.XGBClassifier() if kind == "classifier" else xgb.XGBRegressor()
        est.load_model(path)
        if method == "predict_margin":
            return lambda x: est.predict(x, output_margin=True)
        if method == "predict_proba" and kind != "classifier":
            raise ValueError("predict_proba needs a classifier; this model is a regressor")
        return getattr(est, method)
    if method == "predict_proba":
        raise ValueError("predict_proba needs a model saved from XGBClassifier; this is a bare "
                         "Booster (use predict)")
    kind = "margin" if method == "predict_margin" else "value"
    return lambda x: booster.inplace_predict(x, predict_type=kind)
