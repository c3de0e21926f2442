"""ONNX runtime (onnxruntime): serves an ``.onnx`` graph.

The batch is fed to the graph's first input (or the ``input`` option) with the dtype the graph
declares; a flat input is reshaped to the input's static shape (or ``input_shape``).  The
first output is returned unless ``output`` names another.  On a replica given a GPU the CUDA
execution provider is used when onnxruntime has it (``onnxruntime-gpu``), else the CPU.
"""

from __future__ import annotations

import logging

log = logging.getLogger("clipper.container")

#: ONNX tensor element types -> numpy dtypes
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32",
                "tensor(float16)": "float16"}


def load(path: str, fmt: str, options: dict, device: str):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        else:
            log.warning("this replica was given a GPU but onnxruntime has no CUDA execution "
                        "provider (install onnxruntime-gpu): running on the CPU")
    sess = ort.InferenceSession(path, providers=providers)
    inputs = {i.name: i for i in sess.get_inputs()}
    name = options.get("input") or sess.get_inputs()[0].name
    if name not in inputs:
        raise ValueError(f"the graph has no input {name!r}; its inputs: {', '.join(inputs)}")
    if len(inputs) > 1 and "input" not in options:
        log.warning("the graph has inputs %s; feeding %s", ", ".join(inputs), name)
    inp = inputs[name]
    outputs = [o.name for o in sess.get_outputs()]
    out = options.get("output", outputs[0])
    if isinstance(out, int):
        if not 0 <= out < len(outputs):
            raise ValueError(f"output index {out} out of range: the graph has {outputs}")
        out = outputs[out]
    if out not in outputs:
        raise ValueError(f"the graph has no output {out!r}; its outputs: {', '.join(outputs)}")
    # the batch's dtype and shape come from the graph unless the options say otherwise
    if options.get("dtype") is None:
        options["dtype"] = _ONNX_DTYPES.get(inp.type)
    if options.get("input_shape") is None:
        dims = list(inp.shape[1:])
        if len(dims) > 1 and all(isinstance(d, int) and d > 0 for d in dims):
            options["input_shape"] = dims
    used = sess.get_providers()[0]
    feed, fetch = inp.name, [out]

    def predict(x):
        return sess.run(fetch, {feed: x})[0]

    predict.device = "cuda:0" if used == "CUDAExecutionProvider" else "cpu"
    return predict
