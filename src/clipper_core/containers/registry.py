"""A registry on the swarm manager, run by Clipper from Debian's ``docker-registry`` package:
how the images a replica runs (the runtime image, a closure's ``clipper-files:`` image, a
model image) reach every node of a swarm without an outside registry or a manual
``docker save | docker load``.

- Clipper starts ``docker-registry serve`` as its child (it dies with the frontend), storing
  under the state directory (``STATE/registry``), unless a registry answers on the port
  already (one the operator runs, or another Clipper's), which is then used as it is.
- Images are pushed as ``127.0.0.1:PORT/<name>`` and services name them **by digest**
  (``127.0.0.1:PORT/clipper-files@sha256:...``): a node pulls exactly the pushed bytes, and a
  node that has them (the manager) starts the task without asking the registry.  127.0.0.0/8
  is a registry the Docker Engine reaches over plain HTTP without any ``insecure-registries``
  setting; every other node needs its own 127.0.0.1:PORT to lead to the manager's registry
  (a TCP forward, or a pull-through ``docker-registry``: docs/cluster.md).
- The registry listens on 127.0.0.1 when the replicas' RPC address is loopback (one node),
  else on every address (other nodes must reach it: open the port to cluster nodes only,
  like the RPC port).
- A push sends only the layers the registry lacks: the runtime image once (about 12 s for
  its 260 MB), then about 0.1 s per model version.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from .. import log
from ..errors import ConfigError

BINARY = "docker-registry"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # PR_SET_PDEATHSIG: the registry goes when the frontend goes, even on SIGKILL
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _has_registry_host(image: str) -> bool:
    """Whether ``image`` names a registry (``host:port/x``, ``a.b/x``, ``localhost/x``)."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


class Registry:
    """The manager's registry (see the module docstring).  Blocking methods: the swarm
    backend calls them in its executor."""

    def __init__(self, port: int, state_dir: str, listen_host: str = "127.0.0.1") -> None:
        self.port = port
        #: how this engine, and every node through its own loopback, names the registry
        self.address = f"127.0.0.1:{port}"
        self.listen = f"{listen_host}:{port}"
        self.root = os.path.join(state_dir, "registry")
        self.proc: subprocess.Popen | None = None
        self._published: dict[str, str] = {}  # local image id -> reference by digest
        self._lock = threading.Lock()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> None:
        """Start the registry, or use the one that answers on the port already."""
        if self._answers():
            log.container.info("using the image registry that answers on %s", self.address)
            return
        binary = shutil.which(BINARY)
        if binary is None:
            raise ConfigError(f"--registry-port needs Debian's docker-registry package on the "
                              f"manager (`apt-get install docker-registry`): no {BINARY} on "
                              "PATH")
        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        config = os.path.join(self.root, "config.yml")
        with open(config, "w") as f:
            f.write("version: 0.1\n"
                    "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.root}/data\n"
                    f"http:\n  addr: {self.listen}\n")
        out = open(os.path.join(self.root, "registry.log"), "ab")
        try:
            self.proc = subprocess.Popen([binary, "serve", config], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        finally:
            out.close()
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                with open(os.path.join(self.root, "registry.log"), "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace")
                raise ConfigError(f"the image registry did not start on {self.listen}: "
                                  f"{tail.strip() or 'no output'}")
            time.sleep(0.05)
        log.container.info("image registry %s started on %s (storage %s)", BINARY,
                           self.listen, self.root)

    def publish(self, client, image: str) -> str:
        """``image`` pushed to the registry, as a reference by digest.  An image that names
        a registry of its own is returned as it is (the nodes pull it from there), and so
        is one this engine lacks (starting its replica reports that)."""
        import docker.errors

        if _has_registry_host(image):
            return image
        try:
            iid = client.api.inspect_image(image)["Id"]
        except docker.errors.ImageNotFound:
            return image
        with self._lock:
            if iid in self._published:
                return self._published[iid]
            name = image.split("@")[0].rsplit(":", 1)[0] if not image.startswith("sha256:") \
                else "clipper-image"
            repo = f"{self.address}/{name}"
            tag = iid.split(":", 1)[1][:16]
            t0 = time.monotonic()
            client.api.tag(iid, repo, tag)
            digest = None
            try:
                for ev in client.api.push(repo, tag=tag, stream=True, decode=True):
                    if ev.get("error"):
                        raise ConfigError(f"cannot push {image} to the registry at "
                                          f"{self.address}: {ev['error']}")
                    digest = (ev.get("aux") or {}).get("Digest") or digest
            except docker.errors.APIError as e:
                raise ConfigError(f"cannot push {image} to the registry at {self.address}: "
                                  f"{e.explanation or e}") from None
            if digest is None:
                raise ConfigError(f"the registry at {self.address} gave no digest for {image}")
            ref = f"{repo}@{digest}"
            log.container.info("pushed %s to the registry as %s in %.1f s", image, ref,
                               time.monotonic() - t0)
            self._published[iid] = ref
            return ref

    def close(self) -> None:
        """Stop the registry if this Clipper started it (its storage stays)."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
