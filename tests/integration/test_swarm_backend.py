"""The swarm backend on a real single-node Docker Swarm (the `swarm` fixture initialises one
when the engine is in none, and leaves it at the end): one labelled service per replica, a
closure baked into an image of its own, a killed task replaced and its replica serving again,
the node of each replica in the listing, placement refused as a clear deploy error, and
`clipper stop` removing the services.

Every test removes only the services carrying its own frontend's label."""

import os
import shutil
import subprocess
import sys

import docker
import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core.testing import (ClipperProcess, free_port, remove_swarm_services,
                                  swarm_services, wait_for)


def plus_ten(inputs):
    return [float(x[0]) + 10 for x in inputs]




@pytest.fixture
def sclipper(swarm, tmp_path):
    state = str(tmp_path / "state")
    # a fixed RPC port: a restarted frontend re-adopts only replicas that connect to it
    c = ClipperProcess(state, extra_args=("--backend", "swarm", "--rpc-port",
                                          str(free_port())))
    c.start()
    try:
        yield c
    finally:
        c.stop()
        remove_swarm_services(state)


def _serves(c, app, want=15.0):
    status, body = c.predict(app, {"input": [5.0]}, timeout_s=10)
    return status == 200 and body["default"] is False and body["output"] == want


def _containers(fid):
    client = docker.from_env()
    try:
        return client.containers.list(filters={"label": f"clipper.frontend={fid}"})
    finally:
        client.close()


def test_files_image_holds_the_files_at_their_paths_and_leaves_the_base_as_it_was(
        docker_image, tmp_path):
    """The image a replica on any node runs: the base plus the files (a directory, a symlink
    taken as its target) at their host paths, made by `docker load` of one layer."""
    from clipper_core.containers import images

    top = tmp_path / "model"
    (top / "sub").mkdir(parents=True)
    (top / "weights.bin").write_bytes(b"\x00\x01weights")
    (top / "sub" / "config.json").write_text('{"k": 1}')
    (top / "link.bin").symlink_to(top / "weights.bin")
    client = docker.from_env()
    tag = images.build_with_files(client, docker_image, (str(top),),
                                  {"clipper.frontend": "files-image-test"})
    try:
        assert tag.startswith("clipper-files:")
        assert images.build_with_files(client, docker_image, (str(top),),
                                       {"clipper.frontend": "files-image-test"}) == tag
        img = client.images.get(tag)
        assert img.labels["clipper.frontend"] == "files-image-test"
        base = client.images.get(docker_image)
        assert img.attrs["RootFS"]["Layers"][:-1] == base.attrs["RootFS"]["Layers"]
        script = ("import os, stat, sys; t = sys.argv[1]; "
                  "print(open(t + '/weights.bin', 'rb').read() == open(t + '/link.bin', "
                  "'rb').read() == b'\\x00\\x01weights', open(t + '/sub/config.json').read(),"
                  " oct(stat.S_IMODE(os.stat('/tmp').st_mode)), os.path.islink(t + '/link.bin'))")
        out = client.containers.run(tag, ["python3", "-c", script, str(top)], remove=True,
                                    network_mode="none").decode()
        # the files are there; /tmp (a parent of theirs) keeps the base's mode
        assert out.split() == ["True", '{"k":', "1}", "0o1777", "False"], out
    finally:
        client.images.remove(tag)
        client.close()


def test_closure_service_answers_a_killed_task_is_replaced_and_stop_removes_it(sclipper):
    c = sclipper
    assert c.endpoints["backend"] == "swarm"
    fid = c.endpoints["frontend_id"]
    conn = c.conn
    conn.register_application("sw", "doubles", -1.0, 2_000_000)
    conn.deploy_python_closure("swm", 1, "doubles", plus_ten, num_replicas=2, cpus=0.5,
                               memory="256m")
    conn.link_model_to_app("sw", "swm")
    assert _serves(c, "sw")
    services = swarm_services(c.state_dir)
    assert len(services) == 2
    node = docker.from_env().info()["Name"]
    replicas = {r["instance_id"]: r for r in conn.get_all_model_replicas(verbose=True)}
    assert len(replicas) == 2
    for s in services:
        spec = s.attrs["Spec"]
        lab = spec["Labels"]
        assert lab["clipper.frontend"] == fid and (lab["clipper.model"],
                                                   lab["clipper.version"]) == ("swm", "1")
        task = spec["TaskTemplate"]
        assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
        assert task["RestartPolicy"]["Condition"] == "none"  # restarts are the supervisor's
        assert task["Resources"]["Limits"] == {"NanoCPUs": 500_000_000,
                                               "MemoryBytes": 256 * 1024**2}
        image = task["ContainerSpec"]["Image"]
        assert image.startswith("clipper-files:")  # closure baked in
        # labelled with its frontend, so that what a Clipper made can be found and removed
        assert docker.from_env().images.get(image).labels["clipper.frontend"] == fid
        assert task["ContainerSpec"]["Labels"]["clipper.frontend"] == fid
        r = replicas[lab["clipper.instance"]]
        assert r["manager"] == "swarm" and r["service"] == s.id[:12] and r["node"] == node
    # a killed task's container: the slot gets a new service, registers and serves again
    victim = _containers(fid)[0]
    iid = victim.labels["clipper.instance"]
    old_service = replicas[iid]["service"]
    victim.kill()
    wait_for(lambda: any(r["instance_id"] == iid and r["connected"]
                         and r.get("service") not in (None, old_service)
                         for r in conn.get_all_model_replicas(verbose=True)),
             timeout_s=30, what="the killed task's replacement to register")
    assert _serves(c, "sw")
    assert len(swarm_services(c.state_dir)) == 2  # the old service is gone, not leaked
    restarted = [r for r in conn.get_all_model_replicas(verbose=True) if r["instance_id"] == iid]
    assert restarted[0]["restarts"] >= 1
    # `clipper logs` reads a service's log
    p = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", c.state_dir,
                        "logs", "swm:1"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "connecting to" in p.stdout, p.stdout[-2000:]
    # `clipper status` shows the node of each replica
    p = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", c.state_dir,
                        "status"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and node in p.stdout, p.stdout + p.stderr
    # `clipper stop` removes the services and their containers
    p = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", c.state_dir,
                        "stop"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert swarm_services(c.state_dir) == []
    wait_for(lambda: not _containers(fid), timeout_s=15, what="the containers to go")


def _keypair_with(braces="{{"):
    import zmq
    while True:
        public, secret = zmq.curve_keypair()
        if braces in public.decode() and braces in secret.decode():
            return public.decode(), secret.decode()


def test_curve_keys_holding_template_braces_reach_the_replica_verbatim(swarm, tmp_path):
    """Swarm expands Go templates in a service's environment: a z85 key holding ``{{`` (one
    replica in about sixty) must still reach the container as it is, not fail the deploy."""
    import json

    state = tmp_path / "state"
    keys = state / "rpc"
    keys.mkdir(parents=True, mode=0o700)
    server_public, server_secret = _keypair_with()
    public, secret = _keypair_with()
    (keys / "server.json").write_text(json.dumps({"public": server_public,
                                                  "secret": server_secret}))
    (keys / "credentials.json").write_text(json.dumps(
        {"server_public": server_public, "public": public, "secret": secret}))
    c = ClipperProcess(str(state), extra_args=("--backend", "swarm"))
    c.start()
    try:
        c.conn.register_application("sk", "doubles", -1.0, 2_000_000)
        c.conn.deploy_python_closure("skm", 1, "doubles", plus_ten)
        c.conn.link_model_to_app("sk", "skm")
        assert _serves(c, "sk")
        [container] = _containers(c.endpoints["frontend_id"])
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert (env["CLIPPER_RPC_SERVER_KEY"], env["CLIPPER_RPC_PUBLIC_KEY"],
                env["CLIPPER_RPC_SECRET_KEY"]) == (server_public, public, secret)
    finally:
        c.stop()
        remove_swarm_services(str(state))


def test_unplaceable_gpu_replica_and_missing_image_are_clear_deploy_errors(sclipper):
    c = sclipper
    c.conn.register_application("sg", "doubles", -1.0, 1_000_000)
    with pytest.raises(ClipperAdminError) as e:
        c.conn.deploy_python_closure("sgm", 1, "doubles", plus_ten, gpus=[0])
    msg = str(e.value)
    assert "cannot place" in msg and "gpu=true" in msg, msg
    assert swarm_services(c.state_dir) == []  # the unplaceable service was removed
    assert c.conn.get_all_models() == []
    # placement constraints from the deploy call reach the service
    with pytest.raises(ClipperAdminError, match="cannot place"):
        c.conn.deploy_python_closure("sgm", 1, "doubles", plus_ten,
                                     constraints=["node.labels.clipper-test==nowhere"])
    with pytest.raises(ClipperAdminError, match="constraints must be"):
        c.conn.deploy_python_closure("sgm", 1, "doubles", plus_ten, constraints="gpu")
    c.conn.deploy_python_closure("sgm", 1, "doubles", plus_ten,
                                 constraints=["node.role==manager"])
    c.conn.link_model_to_app("sg", "sgm")
    assert _serves(c, "sg")
    [svc] = swarm_services(c.state_dir)
    assert svc.attrs["Spec"]["TaskTemplate"]["Placement"]["Constraints"] == [
        "node.role==manager"]
    with pytest.raises(ClipperAdminError, match="never pulled"):
        c.conn.deploy_image("sgi", 1, "doubles", "no-such-image:nowhere")
    assert [x.id for x in swarm_services(c.state_dir)] == [svc.id]


def test_frontend_sigkill_then_restart_readopts_the_services(sclipper):
    c = sclipper
    c.conn.register_application("sr", "doubles", -1.0, 2_000_000)
    c.conn.deploy_python_closure("srm", 1, "doubles", plus_ten, num_replicas=2)
    c.conn.link_model_to_app("sr", "srm")
    before = {s.id for s in swarm_services(c.state_dir)}
    assert len(before) == 2
    c.kill()
    assert {s.id for s in swarm_services(c.state_dir)} == before  # they outlive the frontend
    c.start()
    wait_for(lambda: _serves(c, "sr"), timeout_s=30, what="the restarted frontend to serve")
    reps = c.conn.get_all_model_replicas(verbose=True)
    assert len(reps) == 2 and all(r["adopted"] and r["manager"] == "swarm" for r in reps)
    assert {s.id for s in swarm_services(c.state_dir)} == before  # no duplicate, no orphan
    assert "re-adopted replica" in c.log()


def test_registry_on_the_manager_serves_replica_images_by_digest(swarm, tmp_path):
    """--registry-port: Clipper runs Debian's docker-registry on the manager, pushes the
    closure's image there and names its services by digest, so any node could pull it."""
    import json
    import urllib.request

    port = free_port()
    state = str(tmp_path / "state")
    c = ClipperProcess(state, extra_args=("--backend", "swarm", "--registry-port", str(port)))
    c.start()
    client = docker.from_env()
    try:
        c.conn.register_application("rg", "doubles", -1.0, 2_000_000)
        c.conn.deploy_python_closure("rgm", 1, "doubles", plus_ten, num_replicas=2,
                                     ready_timeout_s=120)  # the first push sends the base
        c.conn.link_model_to_app("rg", "rgm")
        assert _serves(c, "rg")
        images = {s.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
                  for s in swarm_services(state)}
        [image] = images  # both replicas run the same pushed image
        assert image.startswith(f"127.0.0.1:{port}/clipper-files@sha256:"), image
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/_catalog", timeout=10) as r:
            catalog = json.load(r)["repositories"]
        assert "clipper-files" in catalog, catalog
        # what the registry holds under that digest is the image the replicas run
        digest = image.split("@", 1)[1]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/clipper-files/manifests/{digest}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Docker-Content-Digest"] == digest
        assert c.stop() == 0
        wait_for(lambda: not _answers(port), timeout_s=10,
                 what="the registry to stop with Clipper")
        assert swarm_services(state) == []
    finally:
        c.stop()
        remove_swarm_services(state)
        for img in client.images.list():  # the registry's names of our images (its port)
            for tag in img.tags:
                if tag.startswith(f"127.0.0.1:{port}/"):
                    client.images.remove(tag)
        client.close()
        shutil.rmtree(os.path.join(state, "registry"), ignore_errors=True)  # the base's 260 MB


def _answers(port):
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
            return True
    except OSError:
        return False
