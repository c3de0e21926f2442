"""LightGBM runtime: serves a booster saved in LightGBM's text format.

``predict`` answers what ``Booster.predict`` answers (values, or probabilities for a
classifier); with the ``classes`` option (the deployer sets it from ``LGBMClassifier.classes_``)
it answers the labels, as ``LGBMClassifier.predict`` does.  ``predict_proba`` gives one
probability per class, ``predict_raw`` raw scores.
"""

from __future__ import annotations

import numpy as np


def load(path: str, fmt: str, options: dict, device: str):
    import lightgbm as lgb

    booster = lgb.Booster(model_file=path)
    method = options["method"]
    classes = options.get("classes")
    labels = None if classes is None else np.asarray(classes)

    def proba(x):
        p = booster.predict(x)
        return np.column_stack((1.0 - p, p)) if p.ndim == 1 else p

    if method == "predict_raw":
        return lambda x: booster.predict(x, raw_score=True)
    if method == "predict_proba":
        return proba
    if labels is None:
        return booster.predict
    return lambda x: labels[np.argmax(proba(x), axis=1)]
