"""Framework runtimes: batch size 1 against adaptive batching, per runtime, in one run.

A real Clipper (``clipper_core.testing.ClipperProcess``) serves, for each framework runtime, one
small model trained here (scikit-learn random forest, XGBoost and LightGBM boosted trees, an
MLP in PyTorch through torch.export and the same MLP exported to ONNX), deployed twice through its
deployer: once with ``batch_size=1`` and once adaptive (AIMD, ``batch_size=-1``), one replica
each.  clipper-bench's load generator drives every deployment in a closed loop (one real row,
its first feature varied; cache off); the deployments run interleaved, in a rotating order, for several rounds.
Reported per runtime and configuration: prediction throughput, client-side p50/p99 latency,
default share and mean batch size, as median (min-max) over the rounds, and the throughput
ratio adaptive / batch-1 taken per round.

Run: ``python benchmarks/runtimes.py [--concurrency 32] [--duration 3] [--rounds 3]
[--runtimes sklearn,xgboost,...]`` (needs the test extra: ``pip install -e '.[test]'``).
Saves JSON under ``benchmarks/results/``.  Loopback runs on a shared 2-core machine swing
1.5-2x between repetitions: compare within one run, read the ranges.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import uvloop

from _load import closed_level, med, save
from clipper_core.testing import ClipperProcess

CONFIGS = {"batch-1": 1, "adaptive": -1}
FEATURES = 32


def _data():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=2000, n_features=FEATURES, n_informative=12,
                               n_classes=4, random_state=0)


def _mlp(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 4)).eval()


def deployers(x, y, tmp: str) -> dict:
    """runtime -> (deploy function, input_type, model, keyword arguments)."""

    def sklearn():
        from sklearn.ensemble import RandomForestClassifier

        from clipper_core.deployers.sklearn import deploy_sklearn_model

        m = RandomForestClassifier(n_estimators=50, max_depth=8, n_jobs=1,
                                   random_state=0).fit(x, y)
        return deploy_sklearn_model, "doubles", m, {}

    def xgboost():
        import xgboost as xgb

        from clipper_core.deployers.xgboost import deploy_xgboost_model

        m = xgb.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=1).fit(x, y)
        return deploy_xgboost_model, "doubles", m, {}

    def lightgbm():
        import lightgbm as lgb

        from clipper_core.deployers.lightgbm import deploy_lightgbm_model

        # n_jobs=1: OpenMP's spinning threads crawl on a loaded 2-core machine
        m = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, n_jobs=1,
                               verbose=-1).fit(x, y)
        return deploy_lightgbm_model, "doubles", m, {}

    def pytorch():
        import torch

        from clipper_core.deployers.pytorch import deploy_pytorch_model

        # exported with torch.export by the deployer (a dynamic batch dimension)
        return deploy_pytorch_model, "floats", _mlp(torch), {
            "example_input": torch.zeros(2, FEATURES)}

    def onnx():
        import warnings

        import torch

        from clipper_core.deployers.onnx import deploy_onnx_model

        path = os.path.join(tmp, "mlp.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_mlp(torch), (torch.zeros(1, FEATURES),), path,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
        return deploy_onnx_model, "floats", path, {}

    return {"sklearn": sklearn, "xgboost": xgboost, "lightgbm": lightgbm,
            "pytorch": pytorch, "onnx": onnx}


def body_template(row: list) -> str:
    """A query body from a real row, its first feature varied by clipper-bench's counter."""
    rest = "".join(f", {float(v)!r}" for v in row[1:])
    return '{"input": [{{i}}e-6' + rest + ']}'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slo-ms", type=float, default=1000.0,
                    help="the apps' SLO (default 1 s: on a loaded 2-core machine a tighter "
                         "one sheds most queries at batch size 1)")
    ap.add_argument("--runtimes", default="sklearn,xgboost,lightgbm,onnx,pytorch")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)

    import signal
    import tempfile

    # a stopped benchmark still stops its Clipper (the with-block below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    x, y = _data()
    template = body_template(x[0].tolist())
    names = [n for n in args.runtimes.split(",") if n]
    runs: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, ClipperProcess(start_timeout_s=60) as clipper:
        conn = clipper.conn
        makers = deployers(x, y, tmp)
        targets = []
        for rt in names:
            fn, input_type, model, kw = makers[rt]()
            for cfg, size in CONFIGS.items():
                name = f"{rt}-{cfg}"
                t0 = time.monotonic()
                conn.register_application(name, input_type, -1, int(args.slo_ms * 1000),
                                          cache_enabled=False)
                fn(conn, name, 1, input_type, model, batch_size=size, **kw)
                conn.link_model_to_app(name, name)
                print(f"deployed {name} in {time.monotonic() - t0:.1f} s", flush=True)
                targets.append((rt, cfg, name))
        for r in range(args.rounds):
            shift = r % len(targets)
            for rt, cfg, name in targets[shift:] + targets[:shift]:
                b0 = conn.get_batching(name)["stats"]["batch_size"]
                res = uvloop.run(closed_level(
                    f"{clipper.query_url}/{name}/predict", args.concurrency,
                    body_template=template, warmup_s=args.warmup, duration_s=args.duration))
                b1 = conn.get_batching(name)["stats"]["batch_size"]
                count = b1["count"] - b0["count"]
                res["mean_batch"] = (b1["sum"] - b0["sum"]) / count if count else 0.0
                res.update({"runtime": rt, "config": cfg, "round": r})
                runs.append(res)
                print(f"round {r} {name:20} {res['throughput']:7.0f} pred/s  p99 "
                      f"{res['p99_ms'] or 0:7.1f} ms  default {res['default_share'] or 0:5.1%}"
                      f"  errors {res['errors']}  mean batch {res['mean_batch']:5.1f}",
                      flush=True)
    load_after = os.getloadavg()

    print(f"\nruntimes: batch size 1 vs adaptive, concurrency {args.concurrency}, SLO "
          f"{args.slo_ms:g} ms, {args.rounds} rounds x {args.duration:g} s, interleaved; "
          f"median (min-max); load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    cols = [("pred/s", "throughput"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
            ("default %", None), ("mean batch", "mean_batch")]
    print(f"{'runtime':9} {'config':9} " + " ".join(f"{c:>18}" for c, _ in cols)
          + f" {'adaptive/batch-1':>18}")
    summary = {}
    for rt in names:
        ratios = []
        for r in range(args.rounds):
            one = [x for x in runs if x["runtime"] == rt and x["round"] == r]
            b1 = next(x["throughput"] for x in one if x["config"] == "batch-1")
            ad = next(x["throughput"] for x in one if x["config"] == "adaptive")
            if b1:
                ratios.append(ad / b1)
        summary[rt] = {"ratio": ratios}
        for cfg in CONFIGS:
            rs = [x for x in runs if x["runtime"] == rt and x["config"] == cfg]
            cells = [med([x["default_share"] * 100 for x in rs if x["default_share"]
                          is not None]) if key is None else med([x[key] for x in rs])
                     for _, key in cols]
            ratio = med(ratios) if cfg == "adaptive" else ""
            print(f"{rt:9} {cfg:9} " + " ".join(f"{c:>18}" for c in cells) + f" {ratio:>18}")
    path = save("runtimes", {"args": vars(args), "load_before": load_before,
                             "load_after": load_after, "runs": runs, "summary": summary},
                args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
