"""The ready-made framework runtimes against a real Clipper: each test trains a tiny model,
deploys it through its deployer (the artifact travels through the management API), and checks
that Clipper's answers equal the framework's own predictions on the same inputs, one query at
a time and as a batch.  Trees and labels must match exactly; float outputs of neural nets
within 1e-5 (float32 arithmetic, batched and unbatched kernels may round differently)."""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from clipper_core.admin import ClipperAdminError

SLO = 20_000_000  # a loaded CI machine must never turn an answer into the default
FLOAT_TOL = 1e-5


def need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"this test needs {module} ({e}); install the test extra: "
                    ".venv/bin/pip install -e '.[test]' (or `make build`)")


def app_for(clipper, unique, input_type: str = "doubles") -> str:
    app = unique("fw")
    clipper.conn.register_application(app, input_type, None, SLO, cache_enabled=False)
    return app


def answers(clipper, app: str, rows: list) -> tuple[list, list]:
    """(answers one query at a time, answers of one input_batch) for ``rows``."""
    single = []
    for r in rows[:5]:
        status, body = clipper.predict(app, {"input": r}, timeout_s=60)
        assert status == 200 and not body["default"], body
        single.append(body["output"])
    status, body = clipper.predict(app, {"input_batch": rows}, timeout_s=60)
    assert status == 200, body
    preds = body["batch_predictions"]
    assert not any(p["default"] for p in preds), preds
    return single, [p["output"] for p in preds]


def assert_batched(clipper, model: str) -> None:
    """The model really saw a batch of several inputs (the batched path was exercised)."""
    recent = clipper.conn.get_batching(model, recent_batches=True)["recent_batches"]
    assert max(size for size, _ in recent) > 1, recent


@pytest.fixture
def deploy(clipper):
    """deploy((app, model, deployer, input_type, model_object, {kw}), ...): deploys them in
    parallel (each replica start is mostly imports), links each model to its app; the
    models are stopped and deleted when the test ends, so that replicas do not pile up."""
    made = []

    def run(*specs):
        with concurrent.futures.ThreadPoolExecutor(len(specs)) as ex:
            futs = [ex.submit(fn, clipper.conn, model, 1, input_type, obj, **dict(*kw))
                    for _, model, fn, input_type, obj, *kw in specs]
            for f in futs:
                f.result()
        for app, model, *_ in specs:
            clipper.conn.link_model_to_app(app, model)
            made.append((app, model))

    yield run
    for app, model in made:
        try:
            clipper.conn.unlink_model_from_app(app, model)
            clipper.conn.delete_versioned_model(model, 1)
        except ClipperAdminError:
            pass


@pytest.fixture(scope="module")
def classification():
    datasets = need("sklearn.datasets")
    x, y = datasets.make_classification(n_samples=200, n_features=6, n_informative=4,
                                        n_classes=3, random_state=0)
    return x, y


def test_sklearn_iris_labels_and_probabilities(clipper, deploy, unique):
    need("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from clipper_core.deployers.sklearn import deploy_sklearn_model

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    rows = x[::5].tolist()
    app, proba_app = app_for(clipper, unique), app_for(clipper, unique)
    # a text pipeline takes the batch of strings as one list
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    texts = ["good film", "bad film", "great acting", "awful plot", "good plot", "bad acting"]
    text_clf = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(
        texts, [1, 0, 1, 0, 1, 0])
    text_app = app_for(clipper, unique, "strings")
    model = unique("iris-proba")
    deploy((app, unique("iris"), deploy_sklearn_model, "doubles", clf),
           (proba_app, model, deploy_sklearn_model, "doubles", clf,
            {"method": "predict_proba"}),
           (text_app, unique("text"), deploy_sklearn_model, "strings", text_clf))
    single, batch = answers(clipper, app, rows)
    want = clf.predict(np.array(rows)).tolist()
    assert single == want[:5] and batch == want
    single, batch = answers(clipper, proba_app, rows)
    want = clf.predict_proba(np.array(rows))
    np.testing.assert_allclose(batch, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(single, want[:5], rtol=0, atol=1e-12)
    assert_batched(clipper, model)
    queries = ["good acting", "awful film", "great plot", "bad", "film", "unknown words"]
    single, batch = answers(clipper, text_app, queries)
    want = text_clf.predict(queries).tolist()
    assert batch == want and single == want[:5]


def test_sklearn_digits_pipeline_and_its_onnx_conversion(clipper, deploy, unique):
    """A scikit-learn pipeline served as is, and converted with skl2onnx served by
    onnxruntime: both give the labels the pipeline gives."""
    need("sklearn"), need("skl2onnx"), need("onnxruntime")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import onnxruntime as ort

    from clipper_core.deployers.onnx import deploy_onnx_model
    from clipper_core.deployers.sklearn import deploy_sklearn_model

    x, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x[:600],
                                                                                  y[:600])
    rows = x[600:640].tolist()
    onx = to_onnx(pipe, x[:1].astype(np.float32), target_opset=17,
                  options={"zipmap": False})
    app, onnx_app, proba_app = (app_for(clipper, unique) for _ in range(3))
    model = unique("digits-onnx")
    deploy((app, unique("digits"), deploy_sklearn_model, "doubles", pipe),
           (onnx_app, model, deploy_onnx_model, "doubles", onx, {"output": "label"}),
           (proba_app, unique("digits-onnx-p"), deploy_onnx_model, "doubles",
            onx.SerializeToString(), {"output": "probabilities"}))
    want = pipe.predict(np.array(rows)).tolist()
    single, batch = answers(clipper, app, rows)
    assert single == want[:5] and batch == want
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    labels, proba = sess.run(["label", "probabilities"],
                             {sess.get_inputs()[0].name: np.array(rows, np.float32)})
    single, batch = answers(clipper, onnx_app, rows)
    assert batch == labels.tolist() and single == labels.tolist()[:5]
    assert sum(a == b for a, b in zip(batch, want)) >= len(want) - 1  # float32 vs float64
    single, batch = answers(clipper, proba_app, rows)
    np.testing.assert_allclose(batch, proba, rtol=0, atol=FLOAT_TOL)
    np.testing.assert_allclose(single, proba[:5], rtol=0, atol=FLOAT_TOL)
    assert_batched(clipper, model)


def test_xgboost_classifier_and_booster_file(clipper, deploy, unique, classification,
                                             tmp_path):
    xgb = need("xgboost")
    from clipper_core.deployers.xgboost import deploy_xgboost_model

    x, y = classification
    clf = xgb.XGBClassifier(n_estimators=12, max_depth=3, random_state=0).fit(x, y)
    rows = x[:40].tolist()
    app, proba_app, margin_app = (app_for(clipper, unique) for _ in range(3))
    model = unique("xgb")
    # a bare Booster saved to a file, deployed from the file alone (raw margins)
    path = tmp_path / "booster.json"
    clf.get_booster().save_model(path)
    deploy((app, model, deploy_xgboost_model, "doubles", clf),
           (proba_app, unique("xgb-p"), deploy_xgboost_model, "doubles", clf,
            {"method": "predict_proba", "artifact_format": "ubj"}),
           (margin_app, unique("xgb-m"), deploy_xgboost_model, "doubles", str(path),
            {"method": "predict_margin"}))
    xa = np.array(rows)
    single, batch = answers(clipper, app, rows)
    assert batch == clf.predict(xa).tolist() and single == batch[:5]
    single, batch = answers(clipper, proba_app, rows)
    assert batch == clf.predict_proba(xa).tolist() and single == batch[:5]
    single, batch = answers(clipper, margin_app, rows)
    assert batch == clf.predict(xa, output_margin=True).tolist() and single == batch[:5]
    assert_batched(clipper, model)


def test_lightgbm_classifier_labels_probabilities_and_raw(clipper, deploy, unique,
                                                          classification):
    lgb = need("lightgbm")
    from clipper_core.deployers.lightgbm import deploy_lightgbm_model

    x, y = classification
    names = np.array(["ant", "bee", "cat"])
    clf = lgb.LGBMClassifier(n_estimators=15, num_leaves=7, n_jobs=1, verbose=-1,
                             random_state=0).fit(x, names[y])
    rows = x[:40].tolist()
    app, proba_app, raw_app = (app_for(clipper, unique) for _ in range(3))
    model = unique("lgb")
    deploy((app, model, deploy_lightgbm_model, "doubles", clf),
           (proba_app, unique("lgb-p"), deploy_lightgbm_model, "doubles", clf,
            {"method": "predict_proba"}),
           (raw_app, unique("lgb-r"), deploy_lightgbm_model, "doubles", clf.booster_,
            {"method": "predict_raw"}))
    xa = np.array(rows)
    single, batch = answers(clipper, app, rows)
    assert batch == clf.predict(xa).tolist() and single == batch[:5]
    assert set(batch) <= set(names)
    single, batch = answers(clipper, proba_app, rows)
    assert batch == clf.predict_proba(xa).tolist() and single == batch[:5]
    single, batch = answers(clipper, raw_app, rows)
    assert batch == clf.predict(xa, raw_score=True).tolist() and single == batch[:5]
    assert_batched(clipper, model)


def _mlp():
    torch = need("torch")
    torch.manual_seed(0)
    return torch, torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                      torch.nn.Linear(16, 3)).eval()


def _script(torch, net):
    """TorchScript of ``net``.  Recent PyTorch deprecates TorchScript (a FutureWarning, an
    error under this suite's filterwarnings) but still saves and loads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(net)


def test_pytorch_torchscript_and_exported_mlp(clipper, deploy, unique):
    """The same MLP as TorchScript (.pt) and as a torch.export program (.pt2, exported by
    the deployer from the nn.Module with a dynamic batch dimension).  The TorchScript
    replica has no GPU and is told so; the exported one is given GPU 0: where torch sees a
    CUDA device it computes on cuda:0, where it sees none (CI) it runs on the CPU and logs
    why, instead of failing (tests/gpu/framework_gpu_check.py checks a real GPU)."""
    torch, net = _mlp()
    from clipper_core.deployers.pytorch import deploy_pytorch_model

    rows = np.random.default_rng(1).normal(size=(30, 4)).round(3).tolist()
    app, export_app = app_for(clipper, unique, "floats"), app_for(clipper, unique, "floats")
    model, gpu_model = unique("mlp"), unique("mlp-pt2")
    deploy((app, model, deploy_pytorch_model, "floats", _script(torch, net)),
           (export_app, gpu_model, deploy_pytorch_model, "floats", net,
            {"example_input": torch.zeros(2, 4), "gpus": ["0"]}))
    with torch.inference_mode():
        want = net(torch.tensor(rows, dtype=torch.float32)).numpy()
    for a in (app, export_app):
        single, batch = answers(clipper, a, rows)
        np.testing.assert_allclose(batch, want, rtol=0, atol=FLOAT_TOL)
        np.testing.assert_allclose(single, want[:5], rtol=0, atol=FLOAT_TOL)
    assert_batched(clipper, model)
    # no gpus given: the replica is told there is no GPU, so it never tries one
    replicas = [r for r in clipper.conn.get_all_model_replicas(verbose=True)
                if r["model_name"] == model]
    with open(f"/proc/{replicas[0]['pid']}/environ", "rb") as f:
        env = f.read().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=" in env, "a CPU replica must get CUDA_VISIBLE_DEVICES=''"
    logs = os.path.join(clipper.state_dir, "logs", f"{replicas[0]['instance_id']}.log")
    assert "device cpu" in _read(logs)
    r = next(r for r in clipper.conn.get_all_model_replicas(verbose=True)
             if r["model_name"] == gpu_model)
    assert r["gpu"] == "0"
    text = _read(os.path.join(clipper.state_dir, "logs", f"{r['instance_id']}.log"))
    if torch.cuda.is_available():
        assert "device cuda:0" in text, text
    else:
        assert "running on the CPU" in text and "device cpu" in text, text


def test_pytorch_mlp_exported_to_onnx_deploys_from_the_file(clipper, deploy, unique,
                                                            tmp_path):
    """An .onnx exported from PyTorch deploys from the file (the deployer imports neither
    torch nor onnx for it) and answers what the torch model answers."""
    torch, net = _mlp()
    need("onnx"), need("onnxruntime")
    from clipper_core.deployers.onnx import deploy_onnx_model

    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(net, (torch.zeros(1, 4),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          dynamo=False)
    rows = np.random.default_rng(2).normal(size=(30, 4)).round(3).tolist()
    app = app_for(clipper, unique)  # doubles in; the runtime casts to the graph's float32
    model = unique("mlp-onnx")
    deploy((app, model, deploy_onnx_model, "doubles", str(path)))
    with torch.inference_mode():
        want = net(torch.tensor(rows, dtype=torch.float32)).numpy()
    single, batch = answers(clipper, app, rows)
    np.testing.assert_allclose(batch, want, rtol=0, atol=FLOAT_TOL)
    np.testing.assert_allclose(single, want[:5], rtol=0, atol=FLOAT_TOL)
    assert_batched(clipper, model)


def test_cli_deploys_a_model_file(clipper, unique, classification, tmp_path):
    xgb = need("xgboost")
    x, y = classification
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, y)
    path = tmp_path / "model.json"
    clf.save_model(path)
    app = app_for(clipper, unique)
    model = unique("xgb-cli")
    out = subprocess.run(
        [sys.executable, "-m", "clipper_core", "deploy-model", "xgboost", model, "1",
         str(path), "--input-type", "doubles", "--app", app, "--management-url",
         clipper.management_url, "--method", "predict_proba"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"deployed {model}:1 (xgboost)" in out.stdout
    single, batch = answers(clipper, app, x[:10].tolist())
    assert batch == clf.predict_proba(x[:10]).tolist()


def test_bad_deploys_are_clear_errors(clipper, unique, classification):
    """Unknown frameworks, methods, options and formats, and non-base64 artifacts, are
    400s naming what was expected; nothing is deployed."""
    conn = clipper.conn
    model = unique("bad")
    cases = [
        (dict(framework="tensorflow"), "framework must be one of sklearn, xgboost"),
        (dict(framework="xgboost", options={"method": "transform"}),
         "method must be one of predict, predict_proba, predict_margin"),
        (dict(framework="xgboost", options={"batch": 3}), "unknown option(s) batch"),
        (dict(framework="onnx", artifact_format="pb"), "loads onnx artifacts"),
        (dict(framework="pytorch", input_type="strings"), "takes input_type"),
        (dict(framework="onnx", options={"input_shape": [0, 3]}), "input_shape must be"),
    ]
    for kw, msg in cases:
        args = dict(input_type="doubles", artifact_format=None, options=None) | kw
        with pytest.raises(ClipperAdminError) as e:
            conn.deploy_model(model, 1, args["input_type"], args["framework"], b"x",
                              args["artifact_format"], args["options"])
        assert e.value.status == 400 and msg in str(e.value), (kw, str(e.value))
    status, body = _post(clipper, "deploy_model", {
        "model_name": model, "model_version": "1", "input_type": "doubles",
        "framework": "xgboost", "artifact": "not base64!"})
    assert status == 400 and "'artifact' must be base64" in body["cause"]
    assert model not in json.dumps(conn.get_all_models())


def test_a_model_the_runtime_cannot_load_fails_the_deploy(clipper, unique):
    """A corrupt artifact: the replica cannot load it, the deploy fails and leaves nothing."""
    need("xgboost")
    model = unique("corrupt")
    with pytest.raises(ClipperAdminError) as e:
        clipper.conn.deploy_model(model, 1, "doubles", "xgboost", b"{not a model",
                                  "json", ready_timeout_s=5)
    assert e.value.status == 400 and "was not deployed" in str(e.value)
    assert f"{model}:1" not in clipper.conn.get_all_models()


def test_inputs_of_the_wrong_width_get_the_default(clipper, deploy, unique, classification):
    xgb = need("xgboost")
    from clipper_core.deployers.xgboost import deploy_xgboost_model

    x, y = classification
    app = unique("fw")
    clipper.conn.register_application(app, "doubles", -1, SLO, cache_enabled=False)
    deploy((app, unique("xgb-w"), deploy_xgboost_model, "doubles",
            xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y)))
    status, body = clipper.predict(app, {"input": [1.0, 2.0]}, timeout_s=60)
    assert status == 200 and body["default"] and body["output"] == -1, body
    status, body = clipper.predict(app, {"input": x[0].tolist()}, timeout_s=60)
    assert status == 200 and not body["default"], body


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def _post(clipper, route: str, body: dict):
    from clipper_core.testing import post_json

    return post_json(f"{clipper.management_url}/admin/{route}", body)


# ------------------------------------------------------------------ a missing framework

BLOCK = textwrap.dedent("""
    import sys
    for m in {mods!r}:
        sys.modules[m] = None  # import fails and importlib.util.find_spec says "absent"
""")


@pytest.fixture
def without_lightgbm(tmp_path):
    d = tmp_path / "block"
    d.mkdir()
    (d / "sitecustomize.py").write_text(BLOCK.format(mods=["lightgbm"]))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(d)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_missing_framework_is_a_deploy_error_naming_the_extra(without_lightgbm, unique):
    from clipper_core.testing import ClipperProcess

    with ClipperProcess(env=without_lightgbm) as c:
        with pytest.raises(ClipperAdminError) as e:
            c.conn.deploy_model(unique("lgb"), 1, "doubles", "lightgbm", b"tree", "txt")
    msg = str(e.value)
    assert e.value.status == 400, msg
    assert "pip install 'clipper-serving[lightgbm]'" in msg and "lightgbm" in msg


def test_runtime_started_without_its_framework_exits_naming_the_extra(without_lightgbm,
                                                                      tmp_path):
    """Where a replica is started some other way (an image lacking the package), the runtime
    itself says what to install."""
    art = tmp_path / "m.txt"
    art.write_text("tree")
    out = subprocess.run(
        [sys.executable, "-m", "model_runtimes.lightgbm", "--artifact", str(art),
         "--model-name", "m", "--model-version", "1", "--input-type", "doubles"],
        env=without_lightgbm, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pip install 'clipper-serving[lightgbm]'" in out.stderr, out.stderr
