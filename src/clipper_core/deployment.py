"""DeploymentController: deploy, warm-up, rollback, scale and delete model versions.

It depends on three things only: the :class:`~clipper_core.registry.Registry` (what is
deployed), the replica :class:`~clipper_core.containers.supervisor.Supervisor` (what runs,
on whichever backend) and a narrow part of the scheduler: ``models`` (to find a registered
replica), ``probe`` (the warm-up call), ``drain`` (a future the scheduler resolves when a
replica owes no batch), ``replica_by_instance``, ``replicas`` and the ``on_replica_change``
hook.  The server's lifecycle (sockets, lock file, endpoints) is not its business.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
from dataclasses import replace
from typing import Any, AsyncIterator

from . import log
from .config import ModelVersion, check_name, check_version
from .containers.base import check_gpus
from .containers.supervisor import Supervisor
from .errors import (BadRequest, ClipperError, ConfigError, Conflict, DeploymentTimeout,
                     ModelError, StateStoreError)
from .inputs import PARSERS
from .registry import Registry


class DeploymentController:
    def __init__(self, registry: Registry, scheduler: Any, supervisor: Supervisor,
                 state_dir: str, cluster: Any = None) -> None:
        self.registry = registry
        #: several frontends (:class:`~clipper_core.cluster.Cluster`): only the one holding
        #: the deployer lease starts and stops replicas; the others write the desired state
        #: and wait for it to reach them.  None: this frontend is its own deployer.
        self.cluster = cluster
        self.scheduler = scheduler
        self.supervisor = supervisor
        self.state_dir = state_dir
        self._ready_waiters: dict[tuple, list[asyncio.Future]] = {}
        #: per-model locks: deploys, scaling and deletions of one model run one at a time
        self._model_locks: dict[str, asyncio.Lock] = {}
        scheduler.on_replica_change = self._on_replica_change

    @property
    def deploys(self) -> bool:
        """Whether this frontend starts and stops replicas (see ``cluster``)."""
        return self.cluster is None or self.cluster.deployer

    async def _replicas_here(self, mv: ModelVersion, n: int, timeout_s: float) -> None:
        """Wait until ``n`` replicas of ``mv`` are connected to this frontend (the deployer
        acts on the changed record; its replicas connect to every frontend)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            mq = self.scheduler.models.get(mv.key)
            have = len(mq.replicas) if mq is not None else 0
            if have == n:
                return
            if loop.time() >= deadline:
                raise DeploymentTimeout(
                    f"model {mv.name}:{mv.version} is recorded with {n} replica(s), but "
                    f"{have} are connected to this frontend after {timeout_s:.0f} s; "
                    f"{self.cluster.describe_deployer()}")
            await asyncio.sleep(0.05)

    def _runnable(self, mv: ModelVersion) -> ModelVersion:
        """``mv`` as this frontend runs it: with several frontends, a closure or model file
        deployed through another frontend is read from the shared store into this one's
        state directory (the recorded path is the other frontend's)."""
        rt = mv.runtime
        if self.cluster is None or rt.get("kind") not in ("closure", "framework"):
            return mv
        filename = os.path.basename(rt["path"])
        local = os.path.abspath(os.path.join(self._closure_dir(mv.name, mv.version), filename))
        if local == rt["path"]:
            return mv
        if not os.path.exists(local):
            blob = self.registry.store.artifact(mv.name, mv.version, filename)
            if blob is None:  # deployed before artifacts were shared: the recorded path
                return mv
            try:
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local + ".tmp", "wb") as f:
                    f.write(blob)
                os.replace(local + ".tmp", local)
            except OSError as e:
                raise StateStoreError(f"cannot store the {filename} of {mv.name}:{mv.version} "
                                      f"at {local}: {e.strerror or e}") from None
        return replace(mv, runtime={**rt, "path": local})

    async def restore(self) -> dict:
        """Give every model version its replicas back, re-adopting those still running (at
        start, or on taking the deployer lease); see :meth:`Supervisor.restore`."""
        return await self.supervisor.restore([self._runnable(mv)
                                              for mv in self.registry.models.values()])

    def _forget_files(self, mv: ModelVersion) -> None:
        if mv.runtime.get("kind") in ("closure", "framework"):
            shutil.rmtree(self._closure_dir(mv.name, mv.version), ignore_errors=True)
            if self.cluster is not None:
                try:
                    self.registry.store.delete_artifacts(mv.name, mv.version)
                except StateStoreError as e:
                    log.state.error("the stored files of %s:%s stay in the state store: %s",
                                    mv.name, mv.version, e.cause)

    # ---------------------------------------------------------------- readiness
    def _on_replica_change(self, key: tuple) -> None:
        mq = self.scheduler.models.get(key)
        if mq is not None and mq.replicas:
            for fut in self._ready_waiters.pop(key, []):
                if not fut.done():
                    fut.set_result(True)

    async def wait_ready(self, key: tuple, timeout_s: float) -> bool:
        """True once a replica of model version ``key`` has registered."""
        mq = self.scheduler.models.get(key)
        if mq is not None and mq.replicas:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._ready_waiters.setdefault(key, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            return False

    def drain(self, instance_id: str) -> asyncio.Future | None:
        """Stop giving new batches to a replica; the future resolves when it owes none."""
        return self.scheduler.drain(instance_id)

    @contextlib.asynccontextmanager
    async def _model_lock(self, name: str) -> AsyncIterator[None]:
        """Deploys, scaling and deletions of one model run one at a time (those of different
        models run concurrently); set_model_version never waits for them."""
        lock = self._model_locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    # ---------------------------------------------------------------- deploy
    def _closure_dir(self, name: str, version: str) -> str:
        return os.path.join(self.state_dir, "models", name, version)

    def _stored_file(self, name: str, version: str, filename: str, b64: Any, field_name: str,
                     what: str) -> tuple[str, Any]:
        """Decode the base64 request field ``b64`` (BadRequest when it is not base64 or empty)
        and return the path the version's replicas load and the step that writes it there
        (``deploy`` runs it under the model lock, after its checks)."""
        try:
            blob = base64.b64decode(b64, validate=True)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"{field_name!r} must be base64 of {what}: {e}") from None
        if not blob:
            raise BadRequest(f"{field_name!r} is empty; expected base64 of {what}")
        path = os.path.abspath(os.path.join(self._closure_dir(name, version), filename))

        def write() -> None:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(blob)
            except OSError as e:
                raise StateStoreError(f"cannot store the {field_name} of {name}:{version} at "
                                      f"{path}: {e.strerror or e}") from None
            if self.cluster is not None:  # for whichever frontend deploys, now or later
                self.registry.store.put_artifact(name, version, filename, blob)

        return path, write

    async def deploy_closure(self, name: str, version: Any, input_type: str, closure_b64: str,
                             **kw: Any) -> ModelVersion:
        """Run a cloudpickled function as a new model version (see :meth:`deploy`)."""
        check_name(name, "model name")
        version = check_version(version)
        path, write = self._stored_file(name, version, "closure.pkl", closure_b64, "closure",
                                        "a cloudpickled function")
        return await self.deploy(name, version, input_type, {"kind": "closure", "path": path},
                                 before=write, **kw)

    async def deploy_model(self, name: str, version: Any, input_type: str, framework: str,
                           artifact_b64: str, artifact_format: str | None = None,
                           options: dict | None = None, **kw: Any) -> ModelVersion:
        """Run a model saved in its framework's own format (an XGBoost JSON model, an .onnx
        graph, ...) with the ready-made runtime of ``framework`` (``model_runtimes``).  The
        artifact is stored in the state directory; warm-up and failure as for :meth:`deploy`."""
        from model_runtimes import frameworks

        check_name(name, "model name")
        version = check_version(version)
        try:
            fw = frameworks.get(framework)
            fmt = fw.formats[0] if artifact_format is None else artifact_format
            opts = frameworks.check_options(fw, input_type, fmt, options)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.supervisor.backend.name == "local":
            # local replicas run in this very Python: a missing framework fails here, clearly
            missing = frameworks.missing_modules(fw)
            if missing:
                raise ConfigError(f"model {name}:{version} was not deployed: "
                                  f"{frameworks.missing_message(fw, missing)}")
        path, write = self._stored_file(name, version, f"model.{fmt}", artifact_b64,
                                        "artifact", f"the model file ({fmt})")
        return await self.deploy(name, version, input_type,
                                 {"kind": "framework", "framework": fw.name, "path": path,
                                  "format": fmt, "options": opts}, before=write, **kw)

    async def deploy_image(self, name: str, version: Any, input_type: str, image: str,
                           **kw: Any) -> ModelVersion:
        """Run a container image (built on the project's base, serving through clipper_rpc)
        as a new model version; needs the docker backend."""
        if not isinstance(image, str) or not image or len(image) > 255:
            raise ConfigError(f"'image' must be an image name or id, got {image!r}")
        return await self.deploy(name, version, input_type, {"kind": "image", "image": image},
                                 **kw)

    async def deploy(self, name: str, version: Any, input_type: str, runtime: dict, *,
                     num_replicas: int = 1, batch_size: int = -1, labels: tuple = (),
                     gpus: Any = (), cpus: Any = None, memory: Any = None,
                     constraints: Any = None, warmup_input: Any = None, ready_timeout_s: float = 60.0,
                     before: Any = None) -> ModelVersion:
        """Deploy a new model version whose replicas run ``runtime``.

        The version becomes current only after one of its replicas has registered and
        answered a warm-up call: ``warmup_input`` (one input as the query API takes it) when
        given, else an empty batch that the container answers without calling the model.
        Until then the previous current version keeps serving.  A deploy that fails (the
        backend refused to start a replica, no replica within ``ready_timeout_s``, or the
        warm-up input raised) changes nothing: its replicas are stopped and the version is
        forgotten.
        """
        check_name(name, "model name")
        version = check_version(version)
        check_replicas(num_replicas, minimum=1)
        if (isinstance(ready_timeout_s, bool) or not isinstance(ready_timeout_s, (int, float))
                or not 0 < ready_timeout_s <= 3600):
            raise ConfigError(f"ready_timeout_s must be a number of seconds in (0, 3600], got "
                              f"{ready_timeout_s!r}")
        runtime = dict(runtime)
        if cpus is not None:
            runtime["cpus"] = check_cpus(cpus)
        if memory is not None:
            runtime["memory"] = check_memory(memory)
        if constraints:
            runtime["constraints"] = check_constraints(constraints)
        mv = ModelVersion(name, version, input_type, batch_size, tuple(labels), runtime,
                          num_replicas, check_gpus(gpus))
        warm: list = []
        if warmup_input is not None:
            try:
                warm = [PARSERS[mv.input_type](warmup_input, name)]
            except ClipperError as e:
                raise ConfigError(f"'warmup_input' is not a valid input for model {name!r}: "
                                  f"{e.cause}") from None
        async with self._model_lock(name):
            reg = self.registry
            if mv.key in reg.models:
                raise Conflict(f"model {name!r} version {version!r} already exists; deploy "
                               "another version, or delete this one first")
            for v in reg.versions(name):  # checked before anything is written
                other = reg.models[(name, v)]
                if other.input_type != mv.input_type:
                    raise ConfigError(f"model {name!r} has input_type {other.input_type}; "
                                      f"version {version!r} declares {mv.input_type}")
            if before is not None:
                before()
            had_current = reg.current.get(name)
            # the first version of a model is current at once (nothing else could serve);
            # any later one only after its warm-up
            reg.add_model(mv, make_current=had_current is None)
            try:
                if self.deploys:  # else the deployer starts them when it reads the record
                    await self.supervisor.set_replicas(mv, num_replicas, self.drain)
                await self._warm_up(mv, warm, ready_timeout_s)
            except BaseException:
                await self._undo_deploy(mv)
                raise
            if had_current is not None:
                reg.set_current_version(name, version)
            log.server.info("model %s:%s deployed with %d replica(s) on the %s backend; it is "
                            "the current version%s", name, version, num_replicas,
                            self.supervisor.backend.name,
                            f" (was {had_current})" if had_current else "")
            return reg.models[mv.key]

    async def _warm_up(self, mv: ModelVersion, inputs: list, timeout_s: float) -> None:
        """Return once a replica of ``mv`` answered a warm-up call; raise if none does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        where = f"`clipper logs {mv.name}:{mv.version}`"
        why = "no replica registered"
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await self.wait_ready(mv.key, left):
                log.container.error("model %s:%s: %s within %.0f s; see %s", mv.name,
                                    mv.version, why, timeout_s, where)
                if not self.deploys:
                    raise DeploymentTimeout(
                        f"model {mv.name}:{mv.version} was not deployed: {why} with this "
                        f"frontend within {timeout_s:.0f} s; "
                        f"{self.cluster.describe_deployer()} (the previous version, if any, "
                        "stays current)")
                raise ConfigError(f"model {mv.name}:{mv.version} was not deployed: {why} within "
                                  f"{timeout_s:.0f} s (the previous version, if any, stays "
                                  f"current); see the replica log with {where}")
            mq = self.scheduler.models.get(mv.key)
            r = next((r for r in mq.replicas.values() if not r.draining), None) if mq else None
            if r is None:
                await asyncio.sleep(0.05)
                continue
            ok, value = await self.scheduler.probe(r, inputs, max(0.001,
                                                                  deadline - loop.time()))
            if ok:
                if inputs:
                    log.server.info("model %s:%s answered its warm-up input with %r",
                                    mv.name, mv.version, value[0] if value else value)
                return
            why = f"the warm-up call failed: {value}"
            if self.scheduler.replica_by_instance(r.instance_id) is r \
                    and loop.time() < deadline:
                # the replica is there and answered with an error
                if not inputs:
                    # a container that hands the empty probe to its model: its loop answers
                    log.container.warning("replica %s of %s:%s answered the warm-up probe "
                                          "with an error (%s); it serves", r.instance_id,
                                          mv.name, mv.version, value)
                    return
                # its model raised on the warm-up input: deploying on would serve errors
                raise ModelError(f"model {mv.name}:{mv.version} was not deployed: its warm-up "
                                 f"call failed: {value} (the previous version, if any, stays "
                                 "current)")
            # the replica was lost (crashed while loading?): wait for the next one

    async def _undo_deploy(self, mv: ModelVersion) -> None:
        try:
            if self.deploys:
                await self.supervisor.set_replicas(mv, 0, self.drain)
        finally:
            if mv.key in self.registry.models:
                self.registry.delete_version(mv.name, mv.version, force=True)
            self._forget_files(mv)

    # ---------------------------------------------------------------- scale, rollback, delete
    async def set_num_replicas(self, name: str, version: str | None, n: int) -> ModelVersion:
        """Scale model version ``version`` (default: the current one) to ``n`` replicas.
        Scaling down drains each replica's batch in flight before stopping it."""
        check_name(name, "model name")
        check_replicas(n)
        if version is not None:
            version = check_version(version)
        async with self._model_lock(name):
            mv = self.registry.get_model(name, version)
            if mv.runtime.get("kind") == "external":
                raise ConfigError(f"the replicas of model {name}:{mv.version} are started outside "
                                  "Clipper (it was registered with add_model): start or stop "
                                  "them yourself")
            mv = self.registry.update_model(mv.key, replicas=n)
            if self.deploys:
                await self.supervisor.set_replicas(self._runnable(mv), n, self.drain)
            else:
                await self._replicas_here(mv, n, 60.0)
        log.server.info("model %s:%s scaled to %d replica(s)", name, mv.version, n)
        return mv

    async def reconcile(self, names: set | list) -> None:
        """Another frontend sharing the state store changed these models: if this frontend
        deploys, start or stop replicas until each version runs its recorded ``replicas``."""
        if not self.deploys:
            return
        for name in sorted(names):
            async with self._model_lock(name):
                wanted = [mv for (n, _), mv in self.registry.models.items() if n == name]
                gone = {s.mv.key: s.mv for s in self.supervisor.find(name)
                        if s.mv.key not in self.registry.models}
                for mv in [*wanted, *(replace(m, replicas=0) for m in gone.values())]:
                    if len(self.supervisor.slots(mv.key)) == mv.replicas:
                        continue
                    try:
                        await self.supervisor.set_replicas(self._runnable(mv), mv.replicas,
                                                           self.drain)
                    except ClipperError as e:
                        log.server.error("model %s:%s: replicas not started here after "
                                         "another frontend's change: %s", mv.name, mv.version,
                                         e.cause)
                for key in gone:  # this frontend's copy of its files (see _runnable)
                    shutil.rmtree(self._closure_dir(*key), ignore_errors=True)

    def set_model_version(self, name: str, version: Any) -> ModelVersion:
        """Make ``version`` current (rollback or roll-forward): takes effect for the next query;
        queries already queued for the previous version are answered by it."""
        check_name(name, "model name")
        version = check_version(version)
        self.registry.set_current_version(name, version)
        mv = self.registry.get_model(name, version)
        mq = self.scheduler.models.get(mv.key)
        if mv.replicas > 0 and (mq is None or not mq.replicas):
            log.server.warning("model %s:%s is current but none of its replicas is connected "
                               "yet: its queries get the default output meanwhile",
                               name, version)
        return mv

    async def delete_version(self, name: str, version: Any) -> ModelVersion:
        """Stop the replicas of one model version (draining them) and forget it.  The current
        version can go only when it is the model's last one and no app links the model."""
        check_name(name, "model name")
        version = check_version(version)
        async with self._model_lock(name):
            return await self._delete_version_locked(name, version)

    async def _delete_version_locked(self, name: str, version: str) -> ModelVersion:
        mv = self.registry.get_model(name, version)
        self.registry.check_delete(name, version)  # refuse before stopping anything
        if self.deploys:  # else the deployer stops them when it reads the change
            await self.supervisor.set_replicas(mv, 0, self.drain)
        self.registry.delete_version(name, version)
        self._forget_files(mv)
        log.server.info("model %s:%s deleted", name, version)
        return mv

    async def stop_inactive_versions(self, names: list) -> list[str]:
        """Stop and forget every version of the named models that is not current (as the
        original clipper_admin did); returns ``name:version`` of each one stopped."""
        for n in names:
            check_name(n, "model name")
            self.registry.get_model(n)  # all known before anything stops
        stopped = []
        for n in dict.fromkeys(names):
            async with self._model_lock(n):
                current = self.registry.current.get(n)
                for v in list(self.registry.versions(n)):
                    if v != current:
                        await self._delete_version_locked(n, v)
                        stopped.append(f"{n}:{v}")
        return stopped

    # ---------------------------------------------------------------- views
    def containers(self) -> list[dict]:
        live = {r.instance_id: r for r in self.scheduler.replicas()}
        out = []
        for c in self.supervisor.containers():
            r = live.pop(c["instance_id"], None)
            c["connected"] = r is not None
            c["healthy"] = r is not None and not r.suspect and not r.draining
            out.append(c)
        if not self.deploys:  # several frontends: the deployer's replicas, from its records
            for rec in self.supervisor.records():
                r = live.pop(rec.get("instance_id"), None)
                out.append({"model_name": rec.get("model_name"),
                            "model_version": rec.get("model_version"),
                            "instance_id": rec.get("instance_id"), "index": rec.get("index"),
                            "pid": rec.get("pid"), "state": "running",
                            "manager": "deployer", "connected": r is not None,
                            "healthy": r is not None and not r.suspect and not r.draining})
        for r in live.values():  # replicas started outside Clipper
            out.append({"model_name": r.key[0], "model_version": r.key[1],
                        "instance_id": r.instance_id, "pid": r.pid, "state": "running",
                        "manager": "external", "connected": True, "healthy": not r.suspect})
        return out

    async def logs(self, name: str, version: str | None = None, tail: int = 200) -> list[dict]:
        """The last ``tail`` lines of each replica of ``name`` (one version, or all)."""
        check_name(name, "model name")
        if version is not None:
            version = check_version(version)
        self.registry.get_model(name, version)  # unknown model or version: a clear 404
        if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= 100_000:
            raise ConfigError(f"tail must be a number of lines 1..100000, got {tail!r}")
        if not self.deploys:
            raise Conflict(f"the replicas' logs are read through the frontend that deploys; "
                           f"{self.cluster.describe_deployer()}")
        out = []
        for s in self.supervisor.find(name, version):
            out.append({"model_name": s.mv.name, "model_version": s.mv.version,
                        "instance_id": s.instance_id,
                        "log": await self.supervisor.logs(s, tail)})
        return out


def check_replicas(n: Any, minimum: int = 0) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not minimum <= n <= 256:
        raise ConfigError(f"num_replicas must be an integer {minimum}..256, got {n!r}")
    return n


_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-]+ ?(==|!=) ?[^\s=!]+$")


def check_constraints(constraints: Any) -> list:
    """Placement constraints of a model's replicas (swarm: ``node.labels.gpu==true``,
    ``node.hostname!=edge-1``); the backends that run on one machine ignore them."""
    if isinstance(constraints, (str, bytes)) or not isinstance(constraints, (list, tuple)) \
            or len(constraints) > 32 or not all(
                isinstance(c, str) and len(c) <= 256 and _CONSTRAINT.match(c)
                for c in constraints):
        raise ConfigError(f"constraints must be a list of placement constraints like "
                          f"\"node.labels.gpu==true\" (ATTRIBUTE==VALUE or !=), got "
                          f"{constraints!r}")
    return list(constraints)


def check_cpus(cpus: Any) -> float:
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus <= 1024:
        raise ConfigError(f"cpus must be a number of CPUs in (0, 1024], got {cpus!r}")
    return float(cpus)


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def check_memory(memory: Any) -> int:
    """Bytes, from an integer or a string like "512m" / "2g"."""
    n = None
    if isinstance(memory, int) and not isinstance(memory, bool):
        n = memory
    elif isinstance(memory, str):
        s = memory.strip().lower()
        unit = s[-1:] if s[-1:] in _UNITS else ""
        num = s[:-1] if unit else s
        if num.isdigit():
            n = int(num) * _UNITS[unit]
    if n is None or not 6 * 1024**2 <= n <= 2**50:
        raise ConfigError(f"memory must be bytes (at least 6m; an integer, or a string like "
                          f"\"512m\" or \"2g\"), got {memory!r}")
    return n
