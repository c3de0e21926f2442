"""GPU check of the PyTorch and ONNX runtimes (issue 12).  Not part of the pytest suite (CI has
no GPU).  Run on a machine with an NVIDIA GPU, PyTorch and onnxruntime (onnxruntime-gpu for
the CUDA provider):

    python3 tests/gpu/framework_gpu_check.py [--json OUT.json] [--seconds 5]

For each runtime it deploys one MLP (through torch.export and as TorchScript for pytorch, the
same net exported to ONNX for onnx) three ways: a mixed replica set ``gpus=["0", "cpu"]`` (two replicas), a GPU-only
and a CPU-only deployment.  It checks that the GPU replicas log ``device cuda:0`` and the CPU
ones ``device cpu``, that every deployment answers what torch answers on the CPU within
1e-4, and measures batched throughput (input_batch of 256 rows, 4 clients) on the GPU against
the CPU.  Exit code 0: PyTorch on cuda:0 is right (ONNX's CUDA provider is checked where
onnxruntime has it; otherwise the report says it fell back to the CPU).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from clipper_core.testing import ClipperProcess

FEATURES, TOL = 64, 1e-4


def mlp(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 10)).eval()


def replica_devices(c: ClipperProcess, model: str) -> list:
    out = []
    for r in c.conn.get_all_model_replicas(verbose=True):
        if r["model_name"] != model:
            continue
        with open(os.path.join(c.state_dir, "logs", f"{r['instance_id']}.log")) as f:
            text = f.read()
        dev = "cuda:0" if "device cuda:0" in text else ("cpu" if "device cpu" in text else "?")
        out.append({"gpu": r["gpu"], "device": dev, "fell_back": "running on the CPU" in text})
    return out


def throughput(c: ClipperProcess, app: str, rows: list, seconds: float) -> float:
    body = {"input_batch": rows}
    end = time.monotonic() + seconds

    def client() -> int:
        n = 0
        while time.monotonic() < end:
            status, ans = c.predict(app, body, timeout_s=60)
            if status == 200:
                n += sum(not p["default"] for p in ans["batch_predictions"])
        return n

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        total = sum(ex.map(lambda _: client(), range(4)))
    return total / (time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    import torch

    from clipper_core.deployers.onnx import deploy_onnx_model
    from clipper_core.deployers.pytorch import deploy_pytorch_model

    net = mlp(torch)
    rows = np.random.default_rng(0).normal(size=(256, FEATURES)).astype(np.float32)
    with torch.inference_mode():
        want = net(torch.from_numpy(rows)).numpy()
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import onnxruntime as ort

        report["onnxruntime"] = ort.__version__
        report["onnx_cuda_provider"] = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        report["onnxruntime"] = None
        report["onnx_cuda_provider"] = False
    checks: dict = {}
    with tempfile.TemporaryDirectory() as tmp, ClipperProcess(start_timeout_s=60) as c:
        onnx_path = os.path.join(tmp, "mlp.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, FEATURES),), onnx_path, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                              dynamo=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            script = torch.jit.script(net)
        runtimes = {"pytorch": (deploy_pytorch_model, net,
                                {"example_input": torch.zeros(2, FEATURES)}),
                    "torchscript": (deploy_pytorch_model, script, {})}
        if report["onnxruntime"]:
            runtimes["onnx"] = (deploy_onnx_model, onnx_path, {})
        for rt, (deploy, model, kw) in runtimes.items():
            res: dict = {}
            for kind, gpus, n in (("mixed", ["0", "cpu"], 2), ("gpu", ["0"], 1),
                                  ("cpu", [], 1)):
                name = f"{rt}-{kind}"
                c.conn.register_application(name, "floats", None, 30_000_000,
                                            cache_enabled=False)
                t0 = time.monotonic()
                deploy(c.conn, name, 1, "floats", model, gpus=gpus, num_replicas=n, **kw)
                c.conn.link_model_to_app(name, name)
                entry = {"deploy_s": round(time.monotonic() - t0, 2)}
                errs = []
                for _ in range(8 if kind == "mixed" else 2):  # both mixed replicas answer
                    status, body = c.predict(name, {"input_batch": rows[:64].tolist()}, 60)
                    got = np.array([p["output"] for p in body["batch_predictions"]])
                    errs.append(float(np.abs(got - want[:64]).max()))
                entry["max_abs_err"] = max(errs)
                entry["replicas"] = replica_devices(c, name)
                if kind != "mixed":
                    entry["batched_pred_per_s"] = round(throughput(c, name, rows.tolist(),
                                                                   args.seconds), 1)
                res[kind] = entry
            expect_gpu = rt != "onnx" or report["onnx_cuda_provider"]
            devs = sorted(r["device"] for r in res["mixed"]["replicas"])
            checks[f"{rt}_mixed_set_one_cuda_one_cpu"] = (
                devs == ["cpu", "cuda:0"] if expect_gpu else devs == ["cpu", "cpu"])
            checks[f"{rt}_gpu_replica_on_cuda0"] = (
                [r["device"] for r in res["gpu"]["replicas"]] ==
                (["cuda:0"] if expect_gpu else ["cpu"]))
            checks[f"{rt}_cpu_replica_on_cpu"] = \
                [r["device"] for r in res["cpu"]["replicas"]] == ["cpu"]
            checks[f"{rt}_answers_within_{TOL}"] = all(
                res[k]["max_abs_err"] <= TOL for k in res)
            res["gpu_over_cpu_throughput"] = round(
                res["gpu"]["batched_pred_per_s"] / max(res["cpu"]["batched_pred_per_s"], 1e-9),
                2)
            report[rt] = res
        report["server_log_tail"] = c.log()[-2000:]
    report["checks"] = checks
    report["ok"] = all(checks.values()) and report["cuda"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
