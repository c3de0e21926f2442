"""PyTorch runtime: serves a TorchScript module (``.pt``, ``torch.jit.save``) or a
``torch.export`` program (``.pt2``, ``torch.export.save``).

The batch becomes one tensor on the replica's device (``cuda:0`` when Clipper gave it a GPU,
else the CPU) and goes through one forward call under ``torch.inference_mode``.  A tuple or
dict output is narrowed with the ``output`` option (index or key; default: the first).
"""

from __future__ import annotations

import logging

log = logging.getLogger("clipper.container")


def load(path: str, fmt: str, options: dict, device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("this replica was given a GPU but torch sees none (a CPU-only torch "
                    "build?): running on the CPU")
        device = "cpu"
    dev = torch.device(device)
    if fmt == "pt2":
        module = torch.export.load(path).module().to(dev)
    else:
        module = torch.jit.load(path, map_location=dev)
    module.eval()
    pick = options.get("output", 0)

    def predict(x):
        with torch.inference_mode():
            y = module(torch.from_numpy(x).to(dev))
            if isinstance(y, dict):
                y = y[pick] if pick in y else next(iter(y.values()))
            elif isinstance(y, (tuple, list)):
                y = y[pick if isinstance(pick, int) else 0]
            return y.detach().cpu().numpy()

    predict.device = str(dev)
    return predict
