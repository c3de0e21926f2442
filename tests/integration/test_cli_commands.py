"""The `clipper` CLI against a real Clipper: it finds the server through the state directory."""

import json
import subprocess
import sys
import textwrap

import pytest


def run_cli(clipper, *args, cwd=None, state_dir=None, ok=True):
    p = subprocess.run(
        [sys.executable, "-m", "clipper_core", "--state-dir", state_dir or clipper.state_dir,
         *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def run_in_process(capsys, clipper, *args, state_dir=None):
    """The same CLI, called in this process (no interpreter start-up per case)."""
    from clipper_core.cli import main

    code = main(["--state-dir", state_dir or clipper.state_dir, *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


MODEL_SOURCE = textwrap.dedent("""
    import numpy as np

    OFFSET = {offset}

    def predict(inputs):
        return [float(np.sum(x)) + OFFSET for x in inputs]
""")


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_SOURCE.format(offset=100))
    pkg = tmp_path / "cli_model_mod.py"
    pkg.write_text(MODEL_SOURCE.format(offset=200))
    return tmp_path


def test_cli_deploy_link_rollback_scale(clipper, unique, model_dir, capsys):
    # the shell path (interpreter, entry point) for the deploys; the rest in-process
    def cli(*args, ok=True):
        p = run_in_process(capsys, clipper, *args)
        assert p.returncode == 0 or not ok, p.stdout + p.stderr
        return p

    app, model = unique("cli-app"), unique("cli")
    cli("register-app", app, "--input-type", "doubles", "--default-output", "-1", "--slo-ms",
        "2000")
    p = run_cli(clipper, "deploy", model, "1", f"{model_dir}/mymodel.py:predict",
                "--input-type", "doubles", "--app", app, "--warmup-input", "[1.0]")
    assert f"deployed {model}:1" in p.stdout and f"linked to app {app}" in p.stdout
    assert clipper.predict(app, {"input": [1.0, 2.0]})[1]["output"] == 103.0
    # module:function, imported from the current directory, shipped by value
    p = run_cli(clipper, "deploy", model, "2", "cli_model_mod:predict", "--input-type",
                "doubles", "--replicas", "2", "--json", cwd=str(model_dir))
    assert json.loads(p.stdout)["model"]["num_replicas"] == 2
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 201.0

    models = json.loads(cli("models", "--json").stdout)
    mine = {m["model_version"]: m for m in models if m["model_name"] == model}
    assert mine["2"]["is_current_version"] and not mine["1"]["is_current_version"]
    table = cli("models").stdout
    assert table.splitlines()[0].split()[:3] == ["MODEL", "VERSION", "CURRENT"]
    assert any(line.split()[:3] == [model, "2", "yes"] for line in table.splitlines())

    p = cli("rollback", model, "1")
    assert f"model {model} now serves version 1" in p.stdout
    assert clipper.predict(app, {"input": [1.0]})[1]["output"] == 101.0
    p = cli("rollback", model, "9", ok=False)
    assert p.returncode == 1 and "versions: 1, 2" in p.stderr

    p = cli("scale", model, "0", "--version", "2", "--json")
    assert json.loads(p.stdout)["num_replicas"] == 0
    apps = json.loads(cli("apps", "--json").stdout)
    assert [a["linked_models"] for a in apps if a["name"] == app] == [[model]]

    status = cli("status").stdout
    assert "APPS" in status and "MODELS" in status and "REPLICAS" in status
    assert app in status and f"{model}:1" in status
    doc = json.loads(cli("status", "--json").stdout)
    mine = [r for r in doc["replicas"] if r["model_name"] == model]
    assert len(mine) == 1 and mine[0]["model_version"] == "1" and mine[0]["healthy"]

    p = cli("unlink", app, model)
    p = cli("delete-version", model, "2")
    assert f"deleted model {model}:2" in p.stdout
    p = cli("delete-version", model, "1")  # the last one, now unlinked
    models = json.loads(cli("models", "--json").stdout)
    assert not [m for m in models if m["model_name"] == model]


def test_cli_errors_are_messages(clipper, unique, model_dir, tmp_path, capsys):
    model = unique("clierr")
    cases = [
        (["deploy", model, "1", "nofunction", "--input-type", "doubles"], 2,
         "path/to/file.py:function or module:function"),
        (["deploy", model, "1", f"{model_dir}/missing.py:predict", "--input-type", "doubles"],
         2, "no such file"),
        (["deploy", model, "1", f"{model_dir}/mymodel.py:nothing", "--input-type", "doubles"],
         2, "has no attribute 'nothing'"),
        (["deploy", model, "1", f"{model_dir}/mymodel.py:OFFSET", "--input-type", "doubles"],
         2, "is not callable"),
        (["deploy", "Bad_Name", "1", f"{model_dir}/mymodel.py:predict", "--input-type",
          "doubles"], 1, "DNS-1123"),
        (["deploy", model, "1", f"{model_dir}/mymodel.py:predict", "--input-type", "doubles",
          "--app", "no-such-app"], 1, "no application named 'no-such-app'"),
        (["scale", "no-such-model", "2"], 1, "No model with name 'no-such-model'"),
        (["register-app", "x", "--input-type", "doubles", "--default-output", "{bad"], 2,
         "--default-output must be JSON"),
    ]
    for args, code, expected in cases:
        p = run_in_process(capsys, clipper, *args)
        assert p.returncode == code and expected in p.stderr, (args, p.stderr)
    p = run_cli(clipper, "scale", model, "-1", ok=False)  # argparse's own exit
    assert p.returncode == 2 and "must be 0 or more" in p.stderr
    (tmp_path / "broken.py").write_text("raise RuntimeError('import-time failure')\n")
    p = run_in_process(capsys, clipper, "deploy", model, "1", f"{tmp_path}/broken.py:f",
                       "--input-type", "doubles")
    assert p.returncode == 2 and "RuntimeError: import-time failure" in p.stderr
    # no Clipper on this state directory
    p = run_in_process(capsys, clipper, "status", state_dir=str(tmp_path / "nothing"))
    assert p.returncode == 1 and "no running Clipper found" in p.stderr
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "endpoints.json").write_text(json.dumps(
        {"management": "http://127.0.0.1:1", "pid": 2**22 + 12345}))
    p = run_in_process(capsys, clipper, "apps", state_dir=str(stale))
    assert p.returncode == 1 and "is not running" in p.stderr
    models = json.loads(run_in_process(capsys, clipper, "models", "--json").stdout)
    assert not [m for m in models if m["model_name"] == model]


def test_cli_deploy_resources_and_logs(clipper, unique, model_dir, capsys):
    name = unique("res")
    p = run_in_process(capsys, clipper, "deploy", name, "1", f"{model_dir}/mymodel.py:predict",
                       "--input-type", "doubles", "--gpus", "0,x")
    assert p.returncode == 1 and "GPU ids" in p.stderr and "'x'" in p.stderr
    p = run_in_process(capsys, clipper, "deploy", name, "1", f"{model_dir}/mymodel.py:predict",
                       "--input-type", "doubles", "--memory", "lots")
    assert p.returncode == 1 and "memory must be bytes" in p.stderr
    p = run_in_process(capsys, clipper, "deploy", name, "1", f"{model_dir}/mymodel.py:predict",
                       "--input-type", "doubles", "--cpus", "0.5", "--memory", "256m",
                       "--gpus", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    info = clipper.conn.get_model_info(name, 1)
    assert info["gpus"] == ["cpu"]
    p = run_in_process(capsys, clipper, "logs", f"{name}:1", "--tail", "5")
    assert p.returncode == 0 and f"==> {name}:1 replica" in p.stdout
    assert "connecting to" in p.stdout  # the replica's own log line
    p = run_in_process(capsys, clipper, "logs", "no-such-model")
    assert p.returncode == 1 and "no-such-model" in p.stderr
