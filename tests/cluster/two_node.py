"""A two-node Docker Swarm on one machine: replicas on both nodes, the second node killed,
its replicas rescheduled on the manager and the app answering again.

    .venv/bin/python tests/cluster/two_node.py      # as root, Docker Engine in no swarm

The second node is a Docker Engine (Debian's docker.io in an mmdebstrap root, built once and
kept as the image ``clipper-test-node:<hash>``) running in a container on a bridge network of
this script's own, with the capabilities dockerd needs (``--privileged`` fails on engines
that lack CAP_SYS_RESOURCE) and the cgroup hierarchies remounted read-write.  The swarm is
initialised on the bridge's gateway address (the node must reach the manager), and Clipper's
RPC socket is bound there too.  Images reach the node through the registry Clipper runs on the
manager (``--registry-port``): services name them ``127.0.0.1:PORT/...@digest``, and on the
second node ``socat`` forwards its own 127.0.0.1:PORT to the manager's registry, as a real
cluster's workers would (docs/cluster.md).  Nothing is copied to the node by hand.

Everything made here carries the label ``clipper.test=two-node`` and is removed at the end:
the node container and its volume, the network, Clipper's services, and the swarm (this
script refuses to run on an engine that is already in one).  It prints the time from the
node's loss to every replica serving on the manager again.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time

import docker

from clipper_core.containers import images
from clipper_core.testing import (ClipperProcess, free_port, gwbridge_exists, leave_swarm,
                                  remove_swarm_services, wait_for)

LABEL = "clipper.test=two-node"
NODE_PACKAGES = "docker.io,iptables,ca-certificates,procps,iproute2,mount,socat"
REPLICAS = 4


def double_it(inputs):
    return [float(x[0]) * 2 for x in inputs]


def sh(*argv, **kw) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"`{' '.join(argv[:4])} ...` failed: {p.stderr.strip()[-1500:]}")
    return p.stdout.strip()


def node_image(client) -> str:
    tag = "clipper-test-node:" + hashlib.sha256(
        f"bookworm {NODE_PACKAGES}".encode()).hexdigest()[:12]
    if images.image_exists(client, tag):
        return tag
    print(f"building {tag} (mmdebstrap with docker.io, about a minute)")
    with tempfile.TemporaryDirectory(prefix="clipper-node-") as tmp:
        sh("mmdebstrap", "--quiet", "--variant=essential", f"--include={NODE_PACKAGES}",
           "bookworm", f"{tmp}/node.tar", timeout=900)
        sh("docker", "import", "--change", f"LABEL {LABEL}", f"{tmp}/node.tar", tag,
           timeout=300)
    return tag




def start_node(client, image: str, network: str, manager: str, token: str,
               registry_port: int) -> str:
    name = f"clipper-two-node-{os.getpid()}"
    sh("docker", "run", "-d", "--name", name, "--hostname", "node2", "--label", LABEL,
       "--network", network, "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
       "--cgroupns", "private", "--security-opt", "seccomp=unconfined",
       "--security-opt", "apparmor=unconfined", "-v", "/var/lib/docker", image, "sh", "-c",
       "for d in /sys/fs/cgroup/*; do mount -o remount,rw,bind $d $d; done; "
       # the node's 127.0.0.1:PORT leads to the manager's registry
       f"socat TCP-LISTEN:{registry_port},bind=127.0.0.1,fork,reuseaddr "
       f"TCP:{manager}:{registry_port} & "
       "exec dockerd >/var/log/dockerd.log 2>&1")
    wait_for(lambda: subprocess.run(["docker", "exec", name, "docker", "info"],
                                    capture_output=True).returncode == 0,
             timeout_s=60, what="the second node's dockerd")
    t = time.monotonic()
    sh("docker", "exec", name, "docker", "swarm", "join", "--token", token, f"{manager}:2377")
    print(f"node2 joined in {time.monotonic() - t:.1f} s")
    return name


def main() -> int:
    client = docker.from_env()
    if client.info()["Swarm"]["LocalNodeState"] != "inactive":
        raise SystemExit("this script initialises a swarm of its own: run it on an engine "
                         "that is in no swarm")
    made: dict = {}
    c = None
    try:
        node_img = node_image(client)
        net = client.networks.create(f"clipper-two-node-{os.getpid()}", driver="bridge",
                                     labels={"clipper.test": "two-node"})
        made["network"] = net
        manager = client.networks.get(net.id).attrs["IPAM"]["Config"][0]["Gateway"]
        had_gwbridge = gwbridge_exists()
        sh("docker", "swarm", "init", "--advertise-addr", manager)
        made["swarm"] = not had_gwbridge  # (True: remove the docker_gwbridge it made)
        token = sh("docker", "swarm", "join-token", "-q", "worker")
        port = free_port()
        made["node"] = start_node(client, node_img, net.name, manager, token, port)
        # the closure's image reaches the node through Clipper's registry, pulled by digest
        c = ClipperProcess(extra_args=("--backend", "swarm", "--rpc-host", manager,
                                       "--registry-port", str(port)))
        c.start()
        conn = c.conn
        conn.register_application("two", "doubles", -1.0, 2_000_000)
        t = time.monotonic()
        conn.deploy_python_closure("twonode", 1, "doubles", double_it, num_replicas=REPLICAS,
                                   ready_timeout_s=300)
        print(f"closure deployed with {REPLICAS} replicas in {time.monotonic() - t:.1f} s "
              "(the runtime image pushed to the registry first)")
        conn.link_model_to_app("two", "twonode")
        here = client.info()["Name"]

        def placement():
            return sorted((r.get("node") or "?") for r in conn.get_all_model_replicas(True)
                          if r.get("connected"))

        wait_for(lambda: len(placement()) == REPLICAS, timeout_s=60, what="all replicas")
        print("replicas on:", placement())
        assert "node2" in placement() and here in placement(), placement()
        answered, failed = [0], []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                status, body = c.predict("two", {"input": [3.0]}, timeout_s=10)
                if status == 200 and not body["default"] and body["output"] == 6.0:
                    answered[0] += 1
                else:
                    failed.append((status, body))
                time.sleep(0.01)

        th = threading.Thread(target=load, daemon=True)
        th.start()
        time.sleep(1)
        t0 = time.monotonic()
        sh("docker", "kill", made["node"])
        print("node2 killed")
        wait_for(lambda: placement() == [here] * REPLICAS, timeout_s=120,
                 what="every replica back on the manager")
        took = time.monotonic() - t0
        stop.set()
        th.join()
        status, body = c.predict("two", {"input": [3.0]})
        assert status == 200 and body["output"] == 6.0, body
        print(f"node loss to {REPLICAS} replicas serving on the manager: {took:.1f} s "
              f"({answered[0]} answered during the run, {len(failed)} default or failed)")
        return 0
    finally:
        if c is not None:
            c.stop()
            remove_swarm_services(c.state_dir)
            for img in client.images.list():  # the registry's names of the images
                for tag in img.tags:
                    if tag.startswith(f"127.0.0.1:{port}/"):
                        client.images.remove(tag)
            c.close()
        if "node" in made:
            subprocess.run(["docker", "rm", "-f", "-v", made["node"]], capture_output=True)
        if "swarm" in made:
            leave_swarm(remove_gwbridge=made["swarm"])
        if "network" in made:
            made["network"].remove()
        client.close()


if __name__ == "__main__":
    sys.exit(main())
