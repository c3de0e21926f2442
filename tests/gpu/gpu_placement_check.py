"""GPU placement check: one model, two replicas, one on GPU 0 and one on the CPU.

Not part of the pytest suite (CI machines have no GPU). Run on a machine with an NVIDIA GPU and
PyTorch:

    python3 tests/gpu/gpu_placement_check.py [--json OUT.json]

It starts a real Clipper, deploys a closure with ``gpus=["0", "cpu"]`` and two replicas, and
checks from the answers that the replica placed on GPU 0 sees exactly that GPU (through
``CUDA_VISIBLE_DEVICES``) and computes on it, while the CPU replica sees no GPU. Exit code 0
means the placement is right.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from clipper_core.testing import ClipperProcess


def where(inputs):
    import os

    import torch

    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    cuda = torch.cuda.is_available()
    out = []
    for x in inputs:
        dev = "cuda" if cuda else "cpu"
        t = torch.as_tensor(x, device=dev)
        out.append({"pid": os.getpid(), "cvd": cvd, "cuda": cuda,
                    "device_count": torch.cuda.device_count() if cuda else 0,
                    "device_name": torch.cuda.get_device_name(0) if cuda else None,
                    "tensor_device": str(t.device), "sum": float(t.sum().item())})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report: dict = {"ok": False}
    with ClipperProcess(start_timeout_s=60) as c:
        conn = c.conn
        conn.register_application("gpu-app", "doubles", None, 30_000_000)
        t0 = time.monotonic()
        conn.deploy_python_closure("where", 1, "doubles", where, num_replicas=2,
                                   gpus=["0", "cpu"])
        conn.link_model_to_app("gpu-app", "where")
        report["deploy_s"] = round(time.monotonic() - t0, 2)
        report["replicas"] = conn.get_all_model_replicas(verbose=True)
        seen: dict = {}
        for i in range(40):
            status, body = c.predict("gpu-app", {"input_batch": [[1.0, 2.0, float(i)]] * 4},
                                     timeout_s=60)
            if status != 200:
                report["error"] = body
                break
            for p in body["batch_predictions"]:
                if p["default"]:
                    continue
                o = p["output"]
                seen[o["pid"]] = o
                assert o["sum"] == 3.0 + i, o
            if len(seen) == 2:
                break
        report["answers_by_replica"] = list(seen.values())
        gpu = [o for o in seen.values() if o["cvd"] == "0"]
        cpu = [o for o in seen.values() if o["cvd"] == ""]
        checks = {
            "two_replicas_answered": len(seen) == 2,
            "gpu_replica_sees_one_gpu": bool(gpu) and gpu[0]["cuda"]
            and gpu[0]["device_count"] == 1,
            "gpu_replica_computes_on_cuda": bool(gpu) and gpu[0]["tensor_device"] == "cuda:0",
            "cpu_replica_sees_no_gpu": bool(cpu) and not cpu[0]["cuda"]
            and cpu[0]["tensor_device"] == "cpu",
        }
        report["checks"] = checks
        report["ok"] = all(checks.values())
        report["server_log_tail"] = c.log()[-3000:]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
