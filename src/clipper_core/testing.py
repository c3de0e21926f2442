"""Helpers for tests and scripts: run a real Clipper in a child process on free ports.

>>> with ClipperProcess() as c:          # doctest: +SKIP
...     c.conn.register_application("app", "doubles", 0.0, 100000)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

from .admin import ClipperConnection


class ClipperProcess:
    """``clipper start`` in a child process with port 0 everywhere and its own state dir."""

    def __init__(self, state_dir: str | None = None, *, extra_args: tuple = (),
                 start_timeout_s: float = 30.0, env: dict | None = None,
                 open_files: int | None = None) -> None:
        self._tmp = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clipper-test-")
            state_dir = self._tmp.name
        self.state_dir = state_dir
        self.extra_args = tuple(extra_args)
        self.start_timeout_s = start_timeout_s
        self.env = env
        #: RLIMIT_NOFILE (soft and hard) of the child, as ``ulimit -n`` would set it
        self.open_files = open_files
        self.proc: subprocess.Popen | None = None
        self.endpoints: dict[str, Any] = {}
        self.log_path = os.path.join(state_dir, "clipper.log")

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "ClipperProcess":
        ep_file = os.path.join(self.state_dir, "endpoints.json")
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            os.unlink(ep_file)
        except OSError:
            pass
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipper_core", "--state-dir", self.state_dir, "start",
             "--query-port", "0", "--mgmt-port", "0", "--rpc-port", "0", *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=self._limit_open_files if self.open_files else None)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clipper exited with code {self.proc.returncode} during "
                                   f"start-up:\n{self.log()}")
            try:
                with open(ep_file) as f:
                    ep = json.load(f)
                if ep.get("pid") == self.proc.pid:
                    self.endpoints = ep
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"clipper did not start within {self.start_timeout_s} s:\n"
                               f"{self.log()}")
        return self

    def _limit_open_files(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._log.close()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would (the model replicas are left behind)."""
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "ClipperProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- access
    @property
    def query_url(self) -> str:
        return self.endpoints["query"]

    @property
    def management_url(self) -> str:
        return self.endpoints["management"]

    @property
    def rpc_credentials(self) -> str | None:
        """The credentials file for replicas started by hand
        (``clipper_rpc.serve(..., credentials=c.rpc_credentials)``); None without auth."""
        return self.endpoints.get("rpc_credentials")

    @property
    def conn(self) -> ClipperConnection:
        return ClipperConnection(self.management_url)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-20000:]
        except OSError:
            return ""

    def predict(self, app: str, body: dict, timeout_s: float = 30.0) -> tuple[int, Any]:
        """POST ``body`` to ``/{app}/predict``; returns (status, parsed JSON)."""
        return post_json(f"{self.query_url}/{app}/predict", body, timeout_s)

    def update(self, app: str, body: dict, timeout_s: float = 30.0) -> tuple[int, Any]:
        """POST feedback ``body`` to ``/{app}/update``; returns (status, parsed JSON)."""
        return post_json(f"{self.query_url}/{app}/update", body, timeout_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS's pick)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_replicas(replicas: dict[str, int]) -> None:
    """Test hygiene: SIGKILL the replica processes a crashed frontend or a failed test left
    behind, ``{instance id: pid}``; only a process that still carries that instance id in its
    environment (a pid may have been reused)."""
    for iid, pid in replicas.items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = f"CLIPPER_INSTANCE_ID={iid}".encode() in f.read().split(b"\0")
        except OSError:
            ours = False
        if ours:
            os.kill(pid, signal.SIGKILL)


def wait_for(cond: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond()`` every 50 ms until it returns something true, and return that; raise
    AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def post_json(url: str, body: Any, timeout_s: float = 30.0,
              raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except ValueError:
            return e.code, payload.decode(errors="replace")


def docker_containers(state_dir: str) -> list:
    """The Docker containers (running or not) of the Clipper on ``state_dir``, found by its
    frontend label."""
    import docker

    with open(os.path.join(state_dir, "frontend_id")) as f:
        fid = f.read().strip()
    client = docker.from_env()
    try:
        return client.containers.list(all=True, filters={"label": f"clipper.frontend={fid}"})
    finally:
        client.close()


def remove_docker_containers(state_dir: str) -> list:
    """Remove the containers the Clipper on ``state_dir`` left (only those with its label)."""
    if not os.path.exists(os.path.join(state_dir, "frontend_id")):
        return []
    left = docker_containers(state_dir)
    for c in left:
        c.remove(force=True)
    return left


def swarm_services(state_dir: str) -> list:
    """The swarm services of the Clipper on ``state_dir`` (swarm backend), found by its
    frontend label."""
    import docker

    with open(os.path.join(state_dir, "frontend_id")) as f:
        fid = f.read().strip()
    client = docker.from_env()
    try:
        return client.services.list(filters={"label": f"clipper.frontend={fid}"})
    finally:
        client.close()


def remove_swarm_services(state_dir: str) -> list:
    """Remove the services the Clipper on ``state_dir`` left (only those with its label), and
    then the images with files baked in that it made (``clipper-files:``, labelled with its
    frontend id too).  Returns the services that were left."""
    if not os.path.exists(os.path.join(state_dir, "frontend_id")):
        return []
    left = swarm_services(state_dir)
    for s in left:
        s.remove()
    remove_frontend_images(state_dir)
    return left


def remove_frontend_images(state_dir: str, timeout_s: float = 20.0) -> list:
    """Remove the images labelled with the frontend id of the Clipper on ``state_dir``, once
    no container of that frontend uses them any more (the swarm removes a removed service's
    containers a moment later).  Returns the tags removed."""
    import docker
    import docker.errors

    with open(os.path.join(state_dir, "frontend_id")) as f:
        fid = f.read().strip()
    label = f"clipper.frontend={fid}"
    client = docker.from_env()
    removed = []
    try:
        wait_for(lambda: not client.api.containers(all=True, filters={"label": label}),
                 timeout_s=timeout_s, what=f"the containers of frontend {fid} to go")
        for img in client.images.list(filters={"label": label}):
            for tag in img.tags or [img.id]:
                try:
                    client.images.remove(tag)
                    removed.append(tag)
                except docker.errors.NotFound:
                    pass
    finally:
        client.close()
    return removed


class RedisServer:
    """A real redis-server child process (Debian's) on a free port with a temp dir, stopped by
    pid; its data survives a kill (append-only file, fsync always), so that it can be killed
    and started again on the same port and dir.  Closes as a context manager."""

    def __init__(self) -> None:
        import shutil

        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError("redis-server is not installed: `apt-get install redis-server` "
                               "(it is listed in .ci/system-packages.txt, which `make test` "
                               "installs)")
        self.dir = tempfile.TemporaryDirectory(prefix="clipper-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             self.dir.name, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--daemonize", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        r = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(r.ping())
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError("redis-server exited at start") from None
                return False
        try:
            wait_for(up, 10, "redis-server to answer PING")
        finally:
            r.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.kill()
        self.dir.cleanup()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def frontends(n: int, state_url: str, extra_args: tuple = ()) -> Iterator[list]:
    """``n`` frontends of one cluster (their state in the Redis at ``state_url``), each a
    :class:`ClipperProcess` with ``extra_args``; all closed on leaving."""
    fs = [ClipperProcess(extra_args=("--state", state_url, *extra_args)) for _ in range(n)]
    try:
        for f in fs:
            f.start()
        yield fs
    finally:
        for f in fs:
            f.close()


def gwbridge_exists() -> bool:
    """Whether the engine has the ``docker_gwbridge`` network (``docker swarm init`` creates
    it when missing, and leaving the swarm keeps it)."""
    p = subprocess.run(["docker", "network", "ls", "-q", "--filter", "name=^docker_gwbridge$"],
                       capture_output=True, text=True, timeout=60)
    return bool(p.stdout.strip())


def leave_swarm(remove_gwbridge: bool) -> None:
    """Leave the swarm this process initialised; with ``remove_gwbridge`` (it was not there
    before the init) also remove the ``docker_gwbridge`` network the init created."""
    subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60)
    if remove_gwbridge:
        subprocess.run(["docker", "network", "rm", "docker_gwbridge"], capture_output=True,
                       timeout=60)
