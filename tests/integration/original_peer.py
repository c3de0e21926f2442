"""Runs the original Clipper's Python model containers (``../shared/reference/
clipper-0.4-containers/``, RPC protocol v3) as real processes, unchanged, against a Clipper.

``python original_peer.py noop|closure`` is what each process runs: it puts the reference
directory on ``sys.path``, stands in for ``clipper_admin.metrics`` (the real module starts
redis-server when imported; the containers only call it when collecting metrics, which is off
here), and starts the reference ``rpc.RPCService`` with the reference container class.  The
environment configures it exactly as the original images did: ``CLIPPER_IP``,
``CLIPPER_PORT``, ``CLIPPER_MODEL_NAME``, ``CLIPPER_MODEL_VERSION``, ``CLIPPER_INPUT_TYPE``,
``CLIPPER_MODEL_PATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import types

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REFERENCE = os.path.abspath(os.path.join(REPO, "..", "shared", "reference",
                                         "clipper-0.4-containers"))


def reference_dir() -> str:
    """The reference containers' directory; fails (never skips) with how to get it."""
    if not os.path.isfile(os.path.join(REFERENCE, "rpc.py")):
        raise AssertionError(
            f"the original Clipper's containers are missing: expected {REFERENCE}/rpc.py. "
            "They live in the shared checkout beside this repository (../shared/reference/"
            "clipper-0.4-containers, copied from ucbrise/clipper containers/python); put "
            "the shared directory there to run this test")
    return REFERENCE


def start(kind: str, model: str, version: str, input_type: str, port: int, *,
          model_path: str | None = None, log_dir: str | None = None,
          host: str = "127.0.0.1") -> subprocess.Popen:
    """Start one original container process (``kind`` noop or closure)."""
    reference_dir()
    env = dict(os.environ)
    env.update(CLIPPER_IP=host, CLIPPER_PORT=str(port), CLIPPER_MODEL_NAME=model,
               CLIPPER_MODEL_VERSION=str(version), CLIPPER_INPUT_TYPE=input_type,
               CLIPPER_MODEL_PATH=model_path or "/nonexistent", PYTHONUNBUFFERED="1")
    log_dir = log_dir or tempfile.gettempdir()
    env["ORIGINAL_PEER_READY_FILE"] = os.path.join(log_dir, f"ready-{model}-{version}.check")
    out = open(os.path.join(log_dir, f"original-{model}-{version}-{os.getpid()}.log"), "ab")
    try:
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), kind], env=env,
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        out.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _main(kind: str) -> None:
    ref = reference_dir()
    sys.path.insert(0, ref)
    # the containers call report_metric/add_metric only when collecting metrics (off here)
    pkg = types.ModuleType("clipper_admin")
    pkg.__path__ = []
    metrics = types.ModuleType("clipper_admin.metrics")
    metrics.report_metric = lambda *a, **k: None
    metrics.add_metric = lambda *a, **k: None
    pkg.metrics = metrics
    sys.modules["clipper_admin"] = pkg
    sys.modules["clipper_admin.metrics"] = metrics
    import builtins

    import rpc  # the reference module, unchanged

    # it writes /model_is_ready.check at start (its image's readiness probe): keep that
    # out of the host's root directory
    ready = "/model_is_ready.check"
    scratch = os.environ.get("ORIGINAL_PEER_READY_FILE") or os.path.join(
        tempfile.gettempdir(), f"original-ready-{os.getpid()}.check")

    def _open(path, *a, **k):
        return builtins.open(scratch if path == ready else path, *a, **k)

    rpc.open = _open
    service = rpc.RPCService(collect_metrics=False)
    if kind == "noop":
        import noop_container

        model = noop_container.NoopContainer()
    elif kind == "closure":
        import python_closure_container

        model = python_closure_container.PythonContainer(service.get_model_path(),
                                                          service.get_input_type())
    else:
        raise SystemExit(f"unknown container kind {kind!r}: noop or closure")
    service.start(model)


if __name__ == "__main__":
    _main(sys.argv[1])


class OriginalContainers:
    """What a ``clipper_admin.ContainerManager`` does for the original client, with original
    container processes instead of Docker: built by :func:`container_manager` as a subclass of
    the real ``ContainerManager`` (imported there, so this module loads without
    ``clipper_admin``).  ``images`` maps an image name to ``(kind, model path)``."""

    def __init__(self, clipper, images: dict) -> None:
        self.clipper = clipper
        self.images = images
        self.cluster_name = "local"
        self.cluster_identifier = "local-original-containers"
        self.procs: dict[tuple, list] = {}
        self.port = int(clipper.endpoints["legacy_rpc"].rsplit(":", 1)[1])

    @staticmethod
    def _addr(url: str) -> str:
        return url.split("//", 1)[1]

    # the Clipper under test is already running: starting it is the test's job
    def start_clipper(self, *args, **kwargs) -> None:
        pass

    def connect(self) -> None:
        pass

    def deploy_model(self, name, version, input_type, image, num_replicas=1) -> None:
        self.set_num_replicas(name, version, input_type, image, num_replicas)

    def _live(self, name, version) -> list:
        procs = [p for p in self.procs.get((name, str(version)), []) if p.poll() is None]
        self.procs[(name, str(version))] = procs
        return procs

    def get_num_replicas(self, name, version) -> int:
        return len(self._live(name, version))

    def set_num_replicas(self, name, version, input_type, image, num_replicas) -> None:
        kind, path = self.images[image]
        procs = self._live(name, version)
        while len(procs) < num_replicas:
            procs.append(start(kind, name, str(version), input_type, self.port,
                               model_path=path, log_dir=self.clipper.state_dir))
        while len(procs) > num_replicas:
            stop(procs.pop())

    def get_logs(self, logging_dir) -> list:
        os.makedirs(logging_dir, exist_ok=True)
        path = os.path.join(logging_dir, "clipper.log")
        with open(path, "w") as f:
            f.write(self.clipper.log())
        return [path]

    def stop_models(self, models) -> None:
        for name, versions in models.items():
            for v in versions:
                for p in self._live(name, v):
                    stop(p)

    def stop_all_model_containers(self) -> None:
        for key in list(self.procs):
            for p in self._live(*key):
                stop(p)

    def stop_all(self, graceful=True) -> None:
        self.stop_all_model_containers()

    def get_admin_addr(self) -> str:
        return self._addr(self.clipper.management_url)

    def get_query_addr(self) -> str:
        return self._addr(self.clipper.query_url)

    def get_metric_addr(self) -> str:
        return self._addr(self.clipper.query_url)


def container_manager(clipper, images: dict):
    """An instance of a real ``clipper_admin`` ``ContainerManager`` subclass that runs
    original containers against ``clipper`` (a ClipperProcess with a legacy RPC port)."""
    try:
        from clipper_admin.container_manager import ContainerManager
    except ImportError as e:
        raise AssertionError(
            f"clipper_admin 0.4.1 is not importable ({e}): `make build` installs it "
            "(pip install --no-deps clipper_admin==0.4.1 plus the modules it imports, "
            "listed in the test extra)") from None
    cls = type("LocalOriginalContainers", (OriginalContainers, ContainerManager), {})
    return cls(clipper, images)
