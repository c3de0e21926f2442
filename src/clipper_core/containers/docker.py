"""DockerBackend: one labelled Docker container per replica (the ``docker`` SDK).

- Images are built on this machine (:mod:`.images`), never pulled: containers are made with
  ``create`` + ``start`` (the SDK's ``run`` pulls a missing image).
- Every container carries the labels ``clipper.frontend`` (this state directory's frontend
  id), ``clipper.model``, ``clipper.version``, ``clipper.instance``, ``clipper.index`` and
  ``clipper.rpc``: re-adoption after a frontend crash lists containers by the frontend label,
  and nothing without it is ever touched.
- ``init=True``: Docker's init forwards SIGTERM, so a stop takes a fraction of a second
  (Python as PID 1 without a handler waits out the whole stop timeout).
- Host networking: the replica reaches the RPC socket the frontend bound on 127.0.0.1.
- Exits come from the engine's ``die`` events (one streaming request, read in a thread).
- Resources: ``nano_cpus``, ``mem_limit``, and a GPU as a device request plus
  ``CUDA_VISIBLE_DEVICES``; a start the engine refuses (no GPU driver, say) is a
  :class:`ReplicaStartError`, and the refused container is removed.

Every SDK call blocks, so each runs in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from typing import Any, Callable

from .. import log
from ..errors import ConfigError
from . import images
from .base import ENV_FRONTEND, ReplicaBackend, ReplicaRef, ReplicaSpec, ReplicaStartError

L_FRONTEND = "clipper.frontend"
L_MODEL = "clipper.model"
L_VERSION = "clipper.version"
L_INSTANCE = "clipper.instance"
L_INDEX = "clipper.index"
L_RPC = "clipper.rpc"


def replica_labels(spec: ReplicaSpec, frontend_id: str) -> dict[str, str]:
    """The labels of a replica's container (and, on swarm, of its service)."""
    return {L_FRONTEND: frontend_id, L_MODEL: spec.model_name, L_VERSION: spec.model_version,
            L_INSTANCE: spec.instance_id, L_INDEX: str(spec.index), L_RPC: spec.rpc_address}


def replica_env(spec: ReplicaSpec, frontend_id: str) -> dict[str, str]:
    env = spec.environment()
    env[ENV_FRONTEND] = frontend_id
    return env


def replica_command(spec: ReplicaSpec) -> tuple[list | None, list]:
    """(entrypoint or None to keep the image's, arguments) of a replica's container."""
    if spec.python:
        return ["python3"], list(spec.argv)
    return None, list(spec.argv)


def connect() -> Any:
    """A docker client that has answered a ping; ConfigError naming the fix if none does."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
        return client
    except Exception as e:
        raise ConfigError(f"the docker backend needs a Docker Engine, and none answered "
                          f"({e}); start one (`dockerd`), or set DOCKER_HOST") from None


class DockerBackend(ReplicaBackend):
    name = "docker"

    def __init__(self, client: Any, frontend_id: str) -> None:
        super().__init__()
        self.client = client
        self.frontend_id = frontend_id
        self._loop = asyncio.get_running_loop()
        self._refs: dict[str, ReplicaRef] = {}  # container id -> replica
        self._dead: dict[str, str] = {}  # instance id -> its last exited container
        self._image: str | None = None
        self._image_lock = asyncio.Lock()
        self._image_task: asyncio.Task | None = None
        self._events: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    async def create(cls, frontend_id: str) -> "DockerBackend":
        client = await asyncio.get_running_loop().run_in_executor(None, connect)
        self = cls(client, frontend_id)
        await self._call(self._open_events)
        # built (or found) at once, in the background: the first deploy waits for it
        self._image_task = self._loop.create_task(self.runtime_image())
        self._image_task.add_done_callback(self._image_done)
        return self

    def _image_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.container.error("cannot build the runtime image: %s (a deploy tries again)",
                                task.exception())

    async def _call(self, fn: Callable, *a: Any, **kw: Any) -> Any:
        return await self._loop.run_in_executor(None, functools.partial(fn, *a, **kw))

    # ---------------------------------------------------------------- events
    def _open_events(self) -> None:
        # opened before any container starts, so that no die event can be missed
        self._events = self.client.events(decode=True, filters={
            "type": "container", "event": "die", "label": f"{L_FRONTEND}={self.frontend_id}"})
        self._thread = threading.Thread(target=self._read_events, name="clipper-docker-events",
                                        daemon=True)
        self._thread.start()

    def _read_events(self) -> None:
        try:
            for ev in self._events:
                cid = ev.get("id") or ev.get("Actor", {}).get("ID")
                attrs = ev.get("Actor", {}).get("Attributes", {})
                try:
                    code = int(attrs.get("exitCode"))
                except (TypeError, ValueError):
                    code = None
                self._loop.call_soon_threadsafe(self._on_die, cid, code)
        except Exception as e:
            if not self._closed:
                log.container.error("the Docker event stream broke (%s): replica exits are "
                                    "no longer seen", e)

    def _on_die(self, cid: str, code: int | None) -> None:
        ref = self._refs.pop(cid, None)
        if ref is None:
            return
        self._dead[ref.instance_id] = cid
        self._exited(ref, code, f"container {cid[:12]} exited with code {code}")

    # ---------------------------------------------------------------- images
    async def runtime_image(self) -> str:
        """The runtime image's tag, built (with the base) on first use."""
        async with self._image_lock:
            if self._image is None:
                log.container.info("building (or finding) the runtime image")
                self._image = await self._call(images.build_runtime, self.client)
                log.container.info("runtime image %s ready", self._image)
            return self._image

    # ---------------------------------------------------------------- replicas
    async def start(self, spec: ReplicaSpec) -> ReplicaRef:
        image = spec.image if spec.image is not None else await self.runtime_image()
        return await self._call(self._start, spec, image)

    def create_container(self, spec: ReplicaSpec, image: str) -> Any:
        """Create (not start) the container of ``spec``: its labels, environment, init,
        host networking and resources.  Blocking."""
        import docker.errors
        from docker.types import DeviceRequest

        entrypoint, command = replica_command(spec)
        kw: dict[str, Any] = dict(
            environment=replica_env(spec, self.frontend_id),
            labels=replica_labels(spec, self.frontend_id), init=True, network_mode="host",
            detach=True, volumes={p: {"bind": p, "mode": "ro"} for p in spec.mounts})
        if entrypoint is not None:
            kw["entrypoint"] = entrypoint
        if command:
            kw["command"] = command
        if spec.cpus is not None:
            kw["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.memory is not None:
            kw["mem_limit"] = int(spec.memory)
        if spec.gpu is not None:
            kw["device_requests"] = [DeviceRequest(device_ids=[spec.gpu],
                                                   capabilities=[["gpu"]])]
        what = f"replica {spec.instance_id} of {spec.model_name}:{spec.model_version}"
        try:
            return self.client.containers.create(image, **kw)
        except docker.errors.ImageNotFound:
            raise ReplicaStartError(f"cannot start {what}: no image {image!r} on this Docker "
                                    "Engine (images are never pulled; build it here)") from None
        except docker.errors.APIError as e:
            raise ReplicaStartError(f"the Docker Engine refused to create {what}: "
                                    f"{e.explanation or e}") from None

    def _start(self, spec: ReplicaSpec, image: str) -> ReplicaRef:
        import docker.errors

        old = self._dead.pop(spec.instance_id, None)
        if old is not None:  # the last exited container of this slot (kept for its log)
            self._remove(old)
        c = self.create_container(spec, image)
        what = f"replica {spec.instance_id} of {spec.model_name}:{spec.model_version}"
        ref = ReplicaRef(spec.instance_id, spec.model_name, spec.model_version, spec.index,
                         spec.rpc_address, handle=c.id)
        self._refs[c.id] = ref
        try:
            c.start()
        except docker.errors.APIError as e:
            self._refs.pop(c.id, None)
            self._remove(c.id)
            gpu = f" (GPU {spec.gpu} requested)" if spec.gpu is not None else ""
            raise ReplicaStartError(f"the Docker Engine refused to start {what}{gpu}: "
                                    f"{e.explanation or e}") from None
        try:
            c.reload()
            ref.pid = c.attrs["State"]["Pid"] or None
        except docker.errors.APIError:
            pass
        return ref

    def _remove(self, cid: str) -> None:
        import docker.errors

        try:
            self.client.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log.container.warning("cannot remove container %s: %s", cid[:12], e)

    async def stop(self, ref: ReplicaRef, grace_s: float) -> None:
        await self._call(self._stop, ref.handle, grace_s)

    def _stop(self, cid: str, grace_s: float) -> None:
        import docker.errors

        try:
            self.client.api.stop(cid, timeout=max(1, math.ceil(grace_s)))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log.container.warning("cannot stop container %s: %s", cid[:12], e)
        self._remove(cid)
        for iid, dead in list(self._dead.items()):
            if dead == cid:
                del self._dead[iid]

    async def recover(self) -> list[ReplicaRef]:
        return await self._call(self._recover)

    def _recover(self) -> list[ReplicaRef]:
        refs = []
        for c in self.client.containers.list(
                all=True, filters={"label": f"{L_FRONTEND}={self.frontend_id}"}):
            lab = c.labels
            if c.status != "running":
                self._remove(c.id)  # an exited replica of a previous frontend
                continue
            try:
                index = int(lab.get(L_INDEX, "-1"))
            except ValueError:
                index = -1
            ref = ReplicaRef(lab.get(L_INSTANCE, c.id), lab.get(L_MODEL, ""),
                             lab.get(L_VERSION, ""), index, lab.get(L_RPC, ""), handle=c.id,
                             pid=c.attrs.get("State", {}).get("Pid") or None, adopted=True)
            self._refs[c.id] = ref
            refs.append(ref)
        return refs

    def describe(self, ref: ReplicaRef) -> dict:
        return {"container": str(ref.handle)[:12]}

    async def logs(self, ref: ReplicaRef, tail: int = 200) -> str:
        return await self._call(self._logs, ref.handle, tail)

    def _logs(self, cid: str, tail: int) -> str:
        import docker.errors

        try:
            return self.client.api.logs(cid, tail=tail).decode(errors="replace")
        except docker.errors.APIError:
            return ""

    async def close(self) -> None:
        self._closed = True
        if self._image_task is not None and not self._image_task.done():
            self._image_task.cancel()  # the build thread finishes on its own
        dead = list(self._dead.values())
        self._dead.clear()
        for cid in dead:
            await self._call(self._remove, cid)
        if self._events is not None:
            try:
                self._events.close()
            except Exception:
                pass
        await self._call(self.client.close)
