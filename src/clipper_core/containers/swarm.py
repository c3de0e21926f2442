"""SwarmBackend: one Docker Swarm service per replica, on a swarm whose manager runs Clipper.

- **One replicated service (``replicas=1``) per replica**, not one per model version: the
  supervisor drains a chosen replica before it stops it, and only a service of its own lets
  it stop exactly that one (scaling a shared service down lets Swarm pick the task to kill,
  which may be the one still owing a batch).  A service keeps the replica's instance id in
  its environment, so whichever node runs it, it registers as the same slot.
- **Restarts are the supervisor's**, as on the other backends: services have the restart
  condition ``none``, the backend watches task states (and node states) and reports an exit;
  the supervisor starts the slot again (a new service; the old one is removed), with its own
  backoff and records.  Swarm's own policy (5 s delay by default) is never in play.
- A task on a node that goes ``down`` counts as exited, so its slot is started again on a
  node that is up.
- Labels, environment, resources and command come from the same helpers as the docker
  backend's containers (:func:`~.docker.replica_labels`, ...), on the service and on its
  containers.  A GPU replica asks for a node labelled ``gpu=true``; a spec's ``constraints``
  are added as placement constraints.
- Host networking: a replica on any node connects to the RPC address the frontend bound
  (``--rpc-host``: the manager's address on a real cluster, 127.0.0.1 on one node).
  Service virtual IPs are not used (they need IPVS, which some kernels lack).
- Files a replica needs (a closure's pickle) are baked into an image of their own
  (:func:`~.images.build_with_files`, about 0.1 s): a bind mount exists only on its own node.
  Images are never pulled from outside; on a multi-node swarm they reach the nodes through
  the registry Clipper runs on the manager (:mod:`.registry`, ``--registry-port``: services
  then name them ``127.0.0.1:PORT/...@digest``), or ``docker save | docker load``
  (docs/cluster.md).

- A stop scales the service to 0 and waits until its task is over before it removes the
  service.  The swarm reports a task's shutdown about 3 s after its container stopped
  (measured here, with SIGTERM, SIGKILL or any grace period alike), so for a task on the
  manager's own node the backend watches its container instead.

Every SDK call blocks, so each runs in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from typing import Any

from .. import log
from ..errors import ConfigError
from ..tasks import cancel_and_wait
from . import images
from .base import ReplicaRef, ReplicaSpec, ReplicaStartError
from .registry import Registry
from .docker import (L_FRONTEND, L_INDEX, L_INSTANCE, L_MODEL, L_RPC, L_VERSION,
                     DockerBackend, connect, replica_command, replica_env, replica_labels)

#: task states that are not over yet
LIVE = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready",
                  "starting", "running"})
POLL_S = 0.25
#: how long a start waits for its task to run (the engine first tries to pull the image)
START_TIMEOUT_S = 60.0


def swarm_manager(client: Any) -> str:
    """The node id of this engine if it is a swarm manager; ConfigError naming the fix if not."""
    info = client.info().get("Swarm", {})
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        raise ConfigError("the swarm backend runs on a Docker Swarm manager, and this engine "
                          f"is not one (swarm state {info.get('LocalNodeState')!r}); run "
                          "`docker swarm init` here, or start Clipper on a manager node")
    return info.get("NodeID", "")



def swarm_literal(value: str) -> str:
    """``value`` as Swarm's service templates (Go's text/template, applied to a service's
    environment) give it back verbatim: every ``{{`` becomes an action printing ``{{``.

    A z85 CURVE key can hold ``{{``; unescaped, Swarm parses what follows as a template and
    refuses the service (``expanding env failed``)."""
    return value.replace("{{", '{{"{{"}}')

class SwarmBackend(DockerBackend):
    """Replicas as swarm services (see the module docstring).  It shares the docker backend's
    client, runtime image and log reading; containers and die events are not its own."""

    name = "swarm"

    def __init__(self, client: Any, frontend_id: str, node_id: str = "",
                 registry: Registry | None = None) -> None:
        super().__init__(client, frontend_id)
        self.node_id = node_id  # the manager's own node
        #: where replica images are pushed for the other nodes (None: they have them)
        self.registry = registry
        self._nodes: dict[str, dict] = {}  # node id -> {"host":, "state":}
        self._where: dict[str, str] = {}  # service id -> node id of its live task
        self._poller: asyncio.Task | None = None

    @classmethod
    async def create(cls, frontend_id: str, registry: Registry | None = None
                     ) -> "SwarmBackend":
        loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(None, connect)
        try:
            node_id = await loop.run_in_executor(None, swarm_manager, client)
            if registry is not None:
                await loop.run_in_executor(None, registry.start)
        except ConfigError:
            client.close()
            raise
        self = cls(client, frontend_id, node_id, registry)
        # built (and pushed) at once, in the background: the first deploy waits for it
        self._image_task = loop.create_task(self._replica_image(None))
        self._image_task.add_done_callback(self._image_done)
        self._poller = loop.create_task(self._poll())
        return self

    async def _replica_image(self, spec: ReplicaSpec | None) -> str:
        """The image a replica of ``spec`` runs (the runtime image for None), with its files
        baked in, and, with a registry, pushed there and named by digest."""
        image = spec.image if spec is not None and spec.image is not None \
            else await self.runtime_image()
        if spec is not None and spec.mounts:
            image = await self._call(images.build_with_files, self.client, image, spec.mounts,
                                     {L_FRONTEND: self.frontend_id})
        if self.registry is not None:
            image = await self._call(self.registry.publish, self.client, image)
        return image

    # ---------------------------------------------------------------- watching
    def _snapshot(self) -> tuple[list, list]:
        return self.client.api.tasks(), self.client.api.nodes()

    async def _poll(self) -> None:
        while not self._closed:
            try:
                tasks, nodes = await self._call(self._snapshot)
                self._seen(tasks, nodes)
            except Exception as e:
                if not self._closed:
                    log.container.warning("cannot list swarm tasks (%s); trying again", e)
            await asyncio.sleep(POLL_S)

    def _seen(self, tasks: list, nodes: list) -> None:
        self._nodes = {n["ID"]: {"host": n.get("Description", {}).get("Hostname", n["ID"][:12]),
                                 "state": n.get("Status", {}).get("State", "unknown")}
                       for n in nodes}
        by_service: dict[str, list] = {}
        for t in tasks:
            if t.get("ServiceID") in self._refs:
                by_service.setdefault(t["ServiceID"], []).append(t)
        for sid, ref in list(self._refs.items()):
            ts = by_service.get(sid, [])
            live = [t for t in ts if t.get("Status", {}).get("State") in LIVE]
            if live:
                node = live[0].get("NodeID", "")
                self._where[sid] = node
                if node and self._nodes.get(node, {}).get("state") == "down":
                    self._gone(sid, None, f"its node {self._nodes[node]['host']} is down")
                continue
            if not ts:
                continue  # the task is not made yet
            t = max(ts, key=lambda t: t.get("UpdatedAt", ""))
            st = t.get("Status", {})
            code = st.get("ContainerStatus", {}).get("ExitCode")
            self._gone(sid, code, f"task {t['ID'][:12]} is {st.get('State')}"
                                  + (f": {st['Err']}" if st.get("Err") else "")
                                  + (f" (exit code {code})" if code is not None else ""))

    def _gone(self, sid: str, code: int | None, reason: str) -> None:
        ref = self._refs.pop(sid, None)
        if ref is None:
            return
        self._dead[ref.instance_id] = sid
        self._exited(ref, code, f"service {sid[:12]}: {reason}")

    # ---------------------------------------------------------------- replicas
    async def start(self, spec: ReplicaSpec) -> ReplicaRef:
        try:
            image = await self._replica_image(spec)
        except ConfigError as e:  # a files image or a push that failed
            raise ReplicaStartError(f"cannot start replica {spec.instance_id} of "
                                    f"{spec.model_name}:{spec.model_version}: {e.cause}"
                                    ) from None
        ref = await self._call(self._start_service, spec, image)
        self._refs[ref.handle] = ref
        return ref

    def _service_name(self, spec: ReplicaSpec) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]", "-", spec.instance_id)[:40].strip("-")
        return f"clipper-{self.frontend_id[:8]}-{base}-{uuid.uuid4().hex[:4]}"

    def _start_service(self, spec: ReplicaSpec, image: str) -> ReplicaRef:
        import docker.errors
        from docker.types import Resources, RestartPolicy, ServiceMode

        old = self._dead.pop(spec.instance_id, None)
        if old is not None:  # the slot's last service (its task is over)
            self._remove(old)
        if not images.image_exists(self.client, image):
            raise ReplicaStartError(
                f"cannot start replica {spec.instance_id} of {spec.model_name}:"
                f"{spec.model_version}: no image {image!r} on the manager (images are never "
                "pulled from outside; build it here and load it on every node)")
        entrypoint, args = replica_command(spec)
        labels = replica_labels(spec, self.frontend_id)
        res: dict[str, Any] = {}
        if spec.cpus is not None:
            res["cpu_limit"] = int(spec.cpus * 1e9)
        if spec.memory is not None:
            res["mem_limit"] = int(spec.memory)
        constraints = list(spec.constraints)
        if spec.gpu is not None and "node.labels.gpu==true" not in constraints:
            constraints.append("node.labels.gpu==true")
        what = f"replica {spec.instance_id} of {spec.model_name}:{spec.model_version}"
        try:
            svc = self.client.services.create(
                image, command=entrypoint, args=args or None, name=self._service_name(spec),
                labels=labels, container_labels=labels,
                env=[f"{k}={swarm_literal(v)}"
                     for k, v in replica_env(spec, self.frontend_id).items()],
                init=True, networks=["host"], mode=ServiceMode("replicated", 1),
                restart_policy=RestartPolicy(condition="none"),
                stop_grace_period=int(3e9), resources=Resources(**res) if res else None,
                constraints=constraints or None)
        except docker.errors.APIError as e:
            raise ReplicaStartError(f"the swarm refused to create a service for {what}: "
                                    f"{e.explanation or e}") from None
        sid = svc.id
        ref = ReplicaRef(spec.instance_id, spec.model_name, spec.model_version, spec.index,
                         spec.rpc_address, handle=sid)
        try:
            task = self._wait_running(sid, what, spec)
        except BaseException:
            self._remove(sid)
            raise
        ref.pid = self._local_pid(task)
        return ref

    def _local_pid(self, task: dict) -> int | None:
        """The replica's pid when its task runs on this (the manager's) node, else None."""
        if task.get("NodeID") != self.node_id:
            return None
        return task.get("Status", {}).get("ContainerStatus", {}).get("PID") or None

    def _wait_running(self, sid: str, what: str, spec: ReplicaSpec) -> dict:
        """Return once the service's task runs; ReplicaStartError when the swarm cannot place
        it (no node fits its constraints or resources) or its task fails at once."""
        deadline = time.monotonic() + START_TIMEOUT_S
        pending_since = None
        while True:
            tasks = self.client.api.tasks(filters={"service": sid})
            for t in tasks:
                st = t.get("Status", {})
                state = st.get("State")
                if state == "running":
                    self._where[sid] = t.get("NodeID", "")
                    return t
                if state not in LIVE:
                    raise ReplicaStartError(
                        f"the swarm could not start {what}: its task is {state}: "
                        f"{st.get('Err') or st.get('Message')}")
                if state == "pending" and st.get("Err"):
                    pending_since = pending_since or time.monotonic()
                    if time.monotonic() - pending_since > 2.0:
                        gpu = (" (a GPU replica needs a node labelled gpu=true: `docker node "
                               "update --label-add gpu=true NODE`)" if spec.gpu is not None
                               else "")
                        raise ReplicaStartError(f"the swarm cannot place {what}: "
                                                f"{st['Err']}{gpu}")
            if time.monotonic() > deadline:
                raise ReplicaStartError(f"the task of {what} did not start within "
                                        f"{START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)

    def _stopped_here(self, task: dict) -> bool:
        """Whether ``task`` runs on this node and its container has stopped (the swarm says
        so only seconds later)."""
        if task.get("NodeID") != self.node_id:
            return False
        cid = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
        if not cid:
            return False
        import docker.errors

        try:
            return not self.client.api.inspect_container(cid)["State"]["Running"]
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError:
            return False

    def _remove(self, sid: str) -> None:
        import docker.errors

        try:
            self.client.api.remove_service(sid)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log.container.warning("cannot remove service %s: %s", sid[:12], e)

    def _remove_container(self, cid: str) -> None:
        import docker.errors

        try:
            self.client.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: the agent is removing it already
                log.container.warning("cannot remove container %s: %s", cid[:12], e)

    async def stop(self, ref: ReplicaRef, grace_s: float) -> None:
        """Scale the service to 0, wait until its task is over (its container stopped, on
        whichever node: the agent reports that), then remove the service.  Removing it at
        once would return before the container is stopped, and a replica still starting up
        could register after its slot was gone.  The wait polls with short calls, so that
        stopping many replicas at once does not hold the executor's few threads."""
        sid = ref.handle
        here = await self._call(self._scale_to_zero, sid, grace_s)
        if here is not None:
            deadline = self._loop.time() + grace_s + 10
            while not await self._call(self._task_over, sid):
                if self._loop.time() > deadline:
                    log.container.warning("service %s still had a live task %.0f s after it "
                                          "was scaled to 0; removing it", sid[:12], grace_s + 10)
                    break
                await asyncio.sleep(0.1)
        await self._call(self._remove, sid)
        # the swarm's agent removes a removed service's stopped container only seconds later:
        # on this node, remove it now, so that a stopped Clipper leaves nothing behind
        for cid in here or ():
            await self._call(self._remove_container, cid)
        for iid, dead in list(self._dead.items()):
            if dead == sid:
                del self._dead[iid]
        self._gone(sid, None, "stopped")

    def _scale_to_zero(self, sid: str, grace_s: float) -> list[str] | None:
        """Scale to 0; a task on this node is stopped here at once (the swarm's agent acts on
        it only about 3 s later).  Returns the ids of the service's containers on this node;
        None when the service is gone already."""
        import docker.errors

        here = []
        try:
            self.client.services.get(sid).scale(0)
            for t in self.client.api.tasks(filters={"service": sid}):
                cid = t.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
                if t.get("NodeID") == self.node_id and cid:
                    here.append(cid)
                    try:
                        self.client.api.stop(cid, timeout=max(1, math.ceil(grace_s)))
                    except docker.errors.NotFound:
                        pass
            return here
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as e:
            log.container.warning("cannot scale service %s to 0: %s", sid[:12], e)
            return None

    def _task_over(self, sid: str) -> bool:
        import docker.errors

        try:
            tasks = self.client.api.tasks(filters={"service": sid})
        except docker.errors.APIError:
            return True
        return not any(t.get("Status", {}).get("State") in LIVE and not self._stopped_here(t)
                       for t in tasks)

    def _recover(self) -> list[ReplicaRef]:
        refs = []
        for s in self.client.api.services(filters={"label": f"{L_FRONTEND}={self.frontend_id}"}):
            sid = s["ID"]
            lab = s.get("Spec", {}).get("Labels", {})
            live = [t for t in self.client.api.tasks(filters={"service": sid})
                    if t.get("Status", {}).get("State") == "running"]
            if not live:
                self._remove(sid)  # a replica of a previous frontend that is over
                continue
            try:
                index = int(lab.get(L_INDEX, "-1"))
            except ValueError:
                index = -1
            ref = ReplicaRef(lab.get(L_INSTANCE, sid), lab.get(L_MODEL, ""),
                             lab.get(L_VERSION, ""), index, lab.get(L_RPC, ""), handle=sid,
                             pid=self._local_pid(live[0]), adopted=True)
            self._where[sid] = live[0].get("NodeID", "")
            self._refs[sid] = ref
            refs.append(ref)
        return refs

    def describe(self, ref: ReplicaRef) -> dict:
        node = self._where.get(ref.handle, "")
        return {"service": str(ref.handle)[:12],
                "node": self._nodes.get(node, {}).get("host", node[:12] or None)}

    def _logs(self, sid: str, tail: int) -> str:
        import docker.errors

        try:
            out = self.client.api.service_logs(sid, stdout=True, stderr=True, tail=tail)
            return b"".join(out).decode(errors="replace")
        except docker.errors.APIError:
            return ""

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._poller)
        await super().close()
        if self.registry is not None:
            await self._loop.run_in_executor(None, self.registry.close)
