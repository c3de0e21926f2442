"""The docker backend on the real Docker Engine of this machine: one labelled container per
replica, restarts from die events, re-adoption after a frontend SIGKILL, resources in
`docker inspect`, a refused GPU start as a clear deploy error, `clipper stop` leaving nothing.

Every test removes only the containers carrying its own frontend's label."""

import asyncio
import os
import subprocess
import sys

import docker
import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core.containers.base import ReplicaSpec, ReplicaStartError
from clipper_core.containers.docker import DockerBackend
from clipper_core.testing import (ClipperProcess, docker_containers, free_port,
                                  remove_docker_containers, wait_for)


def plus_ten(inputs):
    return [float(x[0]) + 10 for x in inputs]




@pytest.fixture
def dclipper(docker_image, tmp_path):
    state = str(tmp_path / "state")
    c = ClipperProcess(state, extra_args=("--backend", "docker", "--rpc-port",
                                          str(free_port())))
    c.start()
    try:
        yield c
    finally:
        c.stop()
        remove_docker_containers(state)


def _running(state):
    return [c for c in docker_containers(state) if c.status == "running"]


def _deploy(c, app, model, replicas, **kw):
    conn = c.conn
    conn.register_application(app, "doubles", -1.0, 2_000_000)
    conn.deploy_python_closure(model, 1, "doubles", plus_ten, num_replicas=replicas, **kw)
    conn.link_model_to_app(app, model)


def _serves(c, app):
    status, body = c.predict(app, {"input": [5.0]}, timeout_s=10)
    return status == 200 and body["default"] is False and body["output"] == 15.0


def test_closure_runs_in_labelled_containers_with_their_limits(dclipper):
    c = dclipper
    _deploy(c, "dk", "dkm", 2, cpus=0.5, memory="256m")
    assert _serves(c, "dk")
    fid = c.endpoints["frontend_id"]
    assert c.endpoints["backend"] == "docker"
    running = _running(c.state_dir)
    assert len(running) == 2
    replicas = {r["instance_id"]: r for r in c.conn.get_all_model_replicas(verbose=True)}
    assert set(replicas) == {x.labels["clipper.instance"] for x in running}
    for x in running:
        assert x.labels["clipper.frontend"] == fid
        assert (x.labels["clipper.model"], x.labels["clipper.version"]) == ("dkm", "1")
        host = x.attrs["HostConfig"]
        assert host["Init"] is True and host["NetworkMode"] == "host"
        assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 * 1024**2
        assert replicas[x.labels["clipper.instance"]]["container"] == x.id[:12]
    # a killed container is restarted (same slot, new container) and serves again
    victim = running[0]
    victim_iid = victim.labels["clipper.instance"]
    victim.kill()
    wait_for(lambda: any(r["instance_id"] == victim_iid and r["connected"]
                         and r.get("container") != victim.id[:12]
                         for r in c.conn.get_all_model_replicas(verbose=True)),
             timeout_s=30, what="the killed container's replacement to register")
    assert _serves(c, "dk")
    assert len(_running(c.state_dir)) == 2
    # `clipper logs` shows a replica's log
    p = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", c.state_dir,
                        "logs", "dkm:1"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("==> dkm:1 replica") == 2 and "connecting to" in p.stdout
    # `clipper stop` leaves no container
    p = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", c.state_dir,
                        "stop"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert docker_containers(c.state_dir) == []


def test_frontend_sigkill_then_restart_readopts_the_containers(dclipper):
    c = dclipper
    _deploy(c, "ra", "ram", 2)
    before = {x.id for x in _running(c.state_dir)}
    assert len(before) == 2
    c.kill()
    assert {x.id for x in _running(c.state_dir)} == before  # they outlive the frontend
    c.start()
    wait_for(lambda: _serves(c, "ra"), timeout_s=30, what="the restarted frontend to serve")
    reps = c.conn.get_all_model_replicas(verbose=True)
    assert len(reps) == 2 and all(r["adopted"] and r["manager"] == "docker" for r in reps)
    assert {x.id for x in docker_containers(c.state_dir)} == before  # no duplicate, no orphan
    assert "re-adopted replica" in c.log()


def test_a_refused_gpu_start_is_a_clear_deploy_error(dclipper):
    c = dclipper
    c.conn.register_application("gp", "doubles", -1.0, 1_000_000)
    with pytest.raises(ClipperAdminError) as e:
        c.conn.deploy_python_closure("gpm", 1, "doubles", plus_ten, gpus=[0])
    msg = str(e.value)
    assert "refused to start" in msg and "GPU 0" in msg, msg
    assert docker_containers(c.state_dir) == []  # the refused container is gone
    assert c.conn.get_all_models() == []  # and the version was never added
    with pytest.raises(ClipperAdminError, match="GPU ids"):
        c.conn.deploy_python_closure("gpm", 1, "doubles", plus_ten, gpus=["x"])


async def test_device_requests_and_gpu_environment_in_docker_inspect(docker_image):
    """The container the engine refuses to start carries the device request and
    CUDA_VISIBLE_DEVICES (seen in `docker inspect` before the backend removes it)."""
    fid = "test-" + os.urandom(4).hex()
    backend = await DockerBackend.create(fid)
    spec = ReplicaSpec("gpu-test-0", "g", "1", 0, "tcp://127.0.0.1:1", argv=("-c", "pass"),
                       python=True, gpu="1", cpus=1.0)
    try:
        ctr = await asyncio.get_running_loop().run_in_executor(
            None, backend.create_container, spec, docker_image)
        host = ctr.attrs["HostConfig"]
        assert host["DeviceRequests"][0]["DeviceIDs"] == ["1"]
        assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
        assert "CUDA_VISIBLE_DEVICES=1" in ctr.attrs["Config"]["Env"]
        ctr.remove(force=True)
        with pytest.raises(ReplicaStartError, match="GPU 1"):
            await backend.start(spec)
    finally:
        client = docker.from_env()
        for x in client.containers.list(all=True, filters={"label": f"clipper.frontend={fid}"}):
            x.remove(force=True)
        client.close()
        await backend.close()


def test_build_and_deploy_model_and_deploy_image(dclipper, tmp_path):
    """An image built offline with a model directory serves it; the same image deploys again
    as a version of another model with deploy_image."""
    c = dclipper
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("7")
    (model_dir / "predict.py").write_text(
        "W = float(open('/model/weights.txt').read())\n"
        "def predict(inputs):\n"
        "    return [W * float(x[0]) for x in inputs]\n")
    conn = c.conn
    conn.register_application("bi", "doubles", -1.0, 2_000_000)
    mv = conn.build_and_deploy_model("bim", 1, "doubles", str(model_dir))
    conn.link_model_to_app("bi", "bim")
    status, body = c.predict("bi", {"input": [3.0]})
    assert status == 200 and body["output"] == 21.0 and not body["default"], body
    image = [x for x in _running(c.state_dir)][0].attrs["Config"]["Image"]
    assert image.startswith("clipper-model-bim:1-")
    conn.register_application("bj", "doubles", -1.0, 2_000_000)
    conn.deploy_image("bjm", 1, "doubles", image)
    conn.link_model_to_app("bj", "bjm")
    assert c.predict("bj", {"input": [2.0]})[1]["output"] == 14.0
    assert mv["model_version"] == "1"
    with pytest.raises(ClipperAdminError, match="never pulled"):
        conn.deploy_image("bjm", 2, "doubles", "no-such-image:nowhere")
    assert c.stop() == 0
    assert not docker_containers(c.state_dir)
    client = docker.from_env()
    client.images.remove(image)  # with its build's intermediate images
    assert not client.images.list(filters={"label": "clipper.model=bim"}, all=True)
    client.close()


def test_deploy_image_on_the_local_backend_is_a_clear_error(clipper):
    with pytest.raises(ClipperAdminError, match="--backend docker"):
        clipper.conn.deploy_image("lim", 1, "doubles", "anything:1")
    assert all(m["model_name"] != "lim" for m in clipper.conn.get_all_models(verbose=True))
