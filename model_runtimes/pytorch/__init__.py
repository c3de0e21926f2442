"""PyTorch runtime: serves a TorchScript module (``.pt``, ``torch.jit.save``) or a
``torch.export`` program (``.pt2``, ``torch.export.save``; export it with a dynamic batch
dimension, as the deployer does, or it only takes batches of the example's size).

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
        program = torch.export.load(path)
        if dev.type != "cpu":
            program = torch.export.passes.move_to_device_pass(program, dev)
        module = program.module()
    else:
        module = torch.jit.load(path, map_location=dev)
    if hasattr(module, "eval") and fmt != "pt2":  # an exported module has no train mode
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
