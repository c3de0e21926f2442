"""Deployers for models trained in a framework, mirroring the original
``clipper_admin.deployers``: each saves the fitted model in its framework's own format, sends
the file through the management API (the frontend need not share a disk with the caller) and
runs it with the ready-made runtime in ``model_runtimes/``.

>>> from clipper_core.deployers.xgboost import deploy_xgboost_model
>>> deploy_xgboost_model(conn, "churn", 1, "doubles", fitted_classifier,
...                      method="predict_proba", num_replicas=2)     # doctest: +SKIP

Every deployer also takes a path to a saved file instead of a fitted object; then it does not
import the framework (:func:`deploy_file` is the same for any framework).
"""

from ._common import deploy_file

__all__ = ["deploy_file"]
