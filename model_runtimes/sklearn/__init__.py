"""scikit-learn runtime: serves an estimator or pipeline saved with joblib.

The whole batch goes to one call of the chosen method (``predict`` by default,
``predict_proba``, ``decision_function``, ...); text pipelines take ``strings`` inputs.
"""

from __future__ import annotations


def load(path: str, fmt: str, options: dict, device: str):
    import joblib

    model = joblib.load(path)
    method = getattr(model, options["method"], None)
    if not callable(method):
        raise ValueError(f"the model ({type(model).__name__}) has no method "
                         f"{options['method']!r}")
    return method
