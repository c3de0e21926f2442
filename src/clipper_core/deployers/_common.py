"""What the framework deployers share: split keyword arguments into deploy settings and
runtime options, and send a file's bytes."""

from __future__ import annotations

import os
from typing import Any

#: keyword arguments that configure the deployment; every other one is a runtime option
DEPLOY_ARGS = ("num_replicas", "batch_size", "labels", "gpus", "warmup_input",
               "ready_timeout_s")


def is_path(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike))


def split(kw: dict) -> tuple[dict, dict]:
    """(runtime options, deploy settings) from a deployer's keyword arguments."""
    deploy = {k: v for k, v in kw.items() if k in DEPLOY_ARGS}
    options = {k: v for k, v in kw.items() if k not in DEPLOY_ARGS and v is not None}
    return options, deploy


def deploy_bytes(conn, framework: str, name: str, version: Any, input_type: str,
                 data: bytes, artifact_format: str, kw: dict) -> dict:
    options, deploy = split(kw)
    return conn.deploy_model(name, version, input_type, framework, data, artifact_format,
                             options, **deploy)


def deploy_file(conn, framework: str, name: str, version: Any, input_type: str,
                path: str | os.PathLike, *, artifact_format: str | None = None,
                **kw: Any) -> dict:
    """Deploy a saved model file with the runtime of ``framework``; the format defaults to
    the file's extension (``model.json`` -> ``json``).  The framework need not be installed
    here: only the bytes travel."""
    path = os.fspath(path)
    fmt = artifact_format or os.path.splitext(path)[1].lstrip(".").lower()
    if not fmt:
        raise ValueError(f"cannot tell the format of {path!r} from its name; give "
                         "artifact_format")
    with open(path, "rb") as f:
        data = f.read()
    return deploy_bytes(conn, framework, name, version, input_type, data, fmt, kw)
