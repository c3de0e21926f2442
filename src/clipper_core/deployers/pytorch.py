"""``deploy_pytorch_model``: a TorchScript module or a ``torch.export`` program."""

from __future__ import annotations

import io
import warnings
from typing import Any

from ._common import deploy_bytes, deploy_file, is_path


def deploy_pytorch_model(conn, name: str, version: Any, input_type: str, model: Any, *,
                         example_input: Any = None, **kw: Any) -> dict:
    """Deploy ``model``: a ``torch.export.ExportedProgram`` (saved as ``.pt2``; give it a
    dynamic batch dimension), an ``nn.Module`` with ``example_input`` (a batch; exported
    with ``torch.export`` and a dynamic batch dimension), a ``torch.jit.ScriptModule``
    (``.pt``; TorchScript is deprecated in recent PyTorch but still loads), or a path to a
    ``.pt`` / ``.pt2`` file.
    ``gpus=["0"]`` runs it on ``cuda:0`` of GPU 0; ``gpus=["0", "cpu"]`` with two replicas
    puts one on the GPU and one on the CPU.  Options: input_shape (one input's shape, e.g.
    [1, 28, 28]), dtype (default float32), output (an index into a tuple output)."""
    if is_path(model):
        return deploy_file(conn, "pytorch", name, version, input_type, model, **kw)
    import torch

    if not isinstance(model, (torch.export.ExportedProgram, torch.jit.ScriptModule)):
        if example_input is None:
            raise ValueError("an nn.Module needs example_input (a batch tensor) to be "
                             "exported with torch.export, or pass a ScriptModule or an "
                             "ExportedProgram")
        batch = torch.export.Dim("batch")
        model = torch.export.export(model.eval(), (example_input,),
                                    dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    if isinstance(model, torch.export.ExportedProgram):
        torch.export.save(model, buf)
        fmt = "pt2"
    else:
        with warnings.catch_warnings():  # the caller chose TorchScript: warned when scripting
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
            torch.jit.save(model, buf)
        fmt = "pt"
    return deploy_bytes(conn, "pytorch", name, version, input_type, buf.getvalue(), fmt, kw)
