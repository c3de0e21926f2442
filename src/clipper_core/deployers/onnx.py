"""``deploy_onnx_model``: an ONNX graph, run with onnxruntime.

Works from a file alone, so a model exported elsewhere (from PyTorch, TensorFlow or
scikit-learn through skl2onnx) deploys without its training framework installed."""

from __future__ import annotations

from typing import Any

from ._common import deploy_bytes, deploy_file, is_path


def deploy_onnx_model(conn, name: str, version: Any, input_type: str, model: Any,
                      **kw: Any) -> dict:
    """Deploy ``model``: an ``onnx.ModelProto``, the serialized bytes, or a path to an
    ``.onnx`` file.  Options: ``output`` (an output name or index; default the first),
    ``input`` (default the first), ``input_shape`` (default the graph's static shape),
    ``dtype`` (default the graph's input type); ``gpus=["0"]`` runs it on a GPU where
    onnxruntime has the CUDA provider."""
    if is_path(model):
        return deploy_file(conn, "onnx", name, version, input_type, model,
                           artifact_format="onnx", **kw)
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return deploy_bytes(conn, "onnx", name, version, input_type, bytes(data), "onnx", kw)
