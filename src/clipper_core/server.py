"""ClipperServer: the query frontend, the management API and the RPC server in one process.

Lifecycle in the style of aiohttp's AppRunner/TCPSite: ``await start()`` binds everything,
``await stop()`` answers what is pending, stops the replicas and closes the sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import shutil
from typing import Any, AsyncIterator

from aiohttp import web

from . import edge, log
from .cache import PredictionCache
from .config import AppConfig, ModelVersion, ServerConfig, check_name, check_version
from .containers.local import LocalProcessManager
from .errors import (BadRequest, ClipperError, ConfigError, Conflict, ModelError,
                     StateStoreError)
from .frontend import make_app as make_query_app
from .inputs import PARSERS
from .metrics import Metrics
from .policies import make_policy
from .predict import QueryProcessor
from .registry import Registry
from .rpc import RpcServer
from .scheduler import BatchingConfig, Scheduler
from .selection import Selection
from .state import StateStore

ENDPOINTS_FILE = "endpoints.json"


class ClipperServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.started = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._lockfile = None
        self.endpoints: dict[str, Any] = {}
        self.batching: dict[tuple, BatchingConfig] = {}
        self._ready_waiters: dict[tuple, list[asyncio.Future]] = {}
        #: per-model locks: deploys, scaling and deletions of one model run one at a time
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._wrote_endpoints = False

    # ---------------------------------------------------------------- lifecycle
    def _lock_state_dir(self) -> None:
        path = os.path.join(self.config.state_dir, "clipper.lock")
        if os.path.exists(self.config.state_dir) and not os.path.isdir(self.config.state_dir):
            raise StateStoreError(f"cannot use {self.config.state_dir} as the state directory: "
                                  "it exists and is not a directory; give a directory with "
                                  "--state-dir")
        try:
            os.makedirs(self.config.state_dir, exist_ok=True)
            f = open(path, "a+")
        except OSError as e:
            raise StateStoreError(
                f"cannot use {self.config.state_dir} as the state directory: "
                f"{e.strerror or e} ({e.filename or path}); give a writable directory "
                "with --state-dir") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise StateStoreError(
                f"another Clipper is running on the state directory {self.config.state_dir} "
                "(stop it with `clipper stop`, or use another --state-dir)") from None
        self._lockfile = f

    async def start(self) -> None:
        cfg = self.config
        self._lock_state_dir()
        self.store = StateStore(cfg.state_dir)
        self.registry = Registry(self.store)
        loop = asyncio.get_running_loop()
        self.rpc = RpcServer(
            cfg.rpc_address,
            lambda send: Scheduler(send, queue_capacity=cfg.queue_capacity, loop=loop),
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            heartbeat_timeout_s=cfg.heartbeat_timeout_s)
        self.scheduler = self.rpc.scheduler
        self.scheduler.on_replica_change = self._on_replica_change
        self.selection = Selection(self.store)
        self.cache = PredictionCache(cfg.cache_bytes)
        self.processor = QueryProcessor(self.registry, self.scheduler, self.cache,
                                        selection=self.selection)
        self.metrics = Metrics(self.processor)
        self.metrics.cache_stats = self.cache.stats
        self.registry.listeners.append(lambda *_: self.sync_models())
        self.registry.listeners.append(self._on_registry_event)
        self.selection.start(self._app_exists)
        # the restored models' queues exist before the RPC socket opens, so that replicas a
        # crashed frontend left running are accepted as soon as they reconnect
        self.sync_models()
        try:
            rpc_endpoint = self.rpc.start()
        except Exception as e:  # zmq.ZMQError: address in use, malformed address
            raise ConfigError(f"cannot bind the model RPC on {cfg.rpc_address}: {e}") from None
        self.manager = LocalProcessManager(
            rpc_endpoint, os.path.join(cfg.state_dir, "logs"),
            on_exit=lambda iid, why: self.scheduler.remove_replica(iid, why),
            store=self.store)

        from .management import make_app as make_mgmt_app

        query = await self._serve(make_query_app(self.processor, cfg.max_body_bytes,
                                                 self.metrics),
                                  cfg.query_host, cfg.query_port)
        mgmt = await self._serve(make_mgmt_app(self, cfg.mgmt_token), cfg.mgmt_host,
                                 cfg.mgmt_port)
        self.endpoints = {"query": f"http://{_host(cfg.query_host)}:{query}",
                          "management": f"http://{_host(cfg.mgmt_host)}:{mgmt}",
                          "rpc": rpc_endpoint, "pid": os.getpid(),
                          "state_dir": os.path.abspath(cfg.state_dir)}
        # restore: every model version with replicas gets them back, re-adopting the
        # replica processes that a crashed frontend left running
        counts = await self.manager.restore(list(self.registry.models.values()))
        if any(counts.values()):
            log.server.info("restored %d apps and %d model versions: %d replicas re-adopted, "
                            "%d started, %d stale ones stopped", len(self.registry.apps),
                            len(self.registry.models), counts["adopted"], counts["started"],
                            counts["stopped"])
        if cfg.demo:
            from .demo import ensure_demo

            await ensure_demo(self)
        # written last: its presence tells scripts (and `clipper stop`) that Clipper is up
        tmp = os.path.join(cfg.state_dir, ENDPOINTS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.endpoints, f)
        os.replace(tmp, os.path.join(cfg.state_dir, ENDPOINTS_FILE))
        self._wrote_endpoints = True
        self.started.set()
        log.server.info("Clipper is up: queries on %s, management on %s, RPC on %s",
                        self.endpoints["query"], self.endpoints["management"], rpc_endpoint)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = edge.EdgeRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def stop(self) -> None:
        log.server.info("shutting down")
        for runner in self._runners:
            await runner.shutdown()
        if hasattr(self, "scheduler"):
            self.scheduler.fail_all("Clipper is shutting down")
        if hasattr(self, "selection"):
            try:
                await self.selection.close(self._app_exists)  # learned weights survive
            except Exception:
                log.state.exception("policy state not written at shutdown")
        if hasattr(self, "manager"):
            await self.manager.close()
        if hasattr(self, "rpc"):
            await self.rpc.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if hasattr(self, "store"):
            self.store.close()
        if self._wrote_endpoints:  # never another Clipper's (we may not hold the lock)
            try:
                os.unlink(os.path.join(self.config.state_dir, ENDPOINTS_FILE))
            except OSError:
                pass
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    # ---------------------------------------------------------------- model queues
    def sync_models(self) -> None:
        """Make the scheduler's queues match the registry (after any management change)."""
        reg = self.registry
        for key, mv in reg.models.items():
            cfg = self.batching.get(key)
            if cfg is None:
                cfg = self.batching[key] = BatchingConfig(
                    batch_size=mv.batch_size, aimd_step=self.config.aimd_step,
                    aimd_backoff=self.config.aimd_backoff, aimd_cap=self.config.aimd_cap)
            elif cfg.batch_size != mv.batch_size:  # keep the other run-time settings
                cfg = self.batching[key] = cfg.replace(batch_size=mv.batch_size)
            self.scheduler.ensure_model(key, mv.input_type, cfg, reg.slo_s_of_model(mv.name))
        for key in list(self.scheduler.models):
            if key not in reg.models:
                self.scheduler.remove_model(key)
                self.batching.pop(key, None)

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
        r = self.scheduler.replica_by_instance(instance_id)
        if r is None:
            return None
        r.draining = True  # no new batches, whatever it answers meanwhile
        log.container.info("draining replica %s of %s:%s (%d batch(es) in flight)",
                           instance_id, r.key[0], r.key[1], len(r.in_flight))
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def check() -> None:
            if not r.in_flight or fut.done():
                if not fut.done():
                    fut.set_result(True)
            else:
                loop.call_later(0.01, check)

        check()
        return fut

    # ---------------------------------------------------------------- selection policies
    def _app_exists(self, name: str) -> bool:
        return name in self.registry.apps

    def _on_registry_event(self, event: str, name: Any) -> None:
        if event == "app_deleted":
            self.selection.forget(name)

    def set_app_policy(self, name: str, policy: str, policy_params: dict | None = None,
                       reset: bool = False) -> AppConfig:
        """Change an app's selection policy or its parameters.  The same policy with new
        parameters keeps what it learned (unless ``reset``); another policy starts afresh."""
        app = self.registry.get_app(name)
        params = {} if policy_params is None else policy_params
        make_policy(policy, params)  # ConfigError names what is wrong
        links = self.registry.links.get(name, [])
        if policy == "single" and len(links) > 1:
            raise ConfigError(f"app {name!r} links {len(links)} models ({', '.join(links)}) and "
                              "policy 'single' serves one; unlink the others first")
        updated = self.registry.update_app(name, policy=policy, policy_params=params)
        self.selection.get(updated, reset=reset)  # carries the state over, or drops it
        log.server.info("app %s: policy %s %s -> %s %s%s", name, app.policy,
                        app.policy_params, policy, params, " (state reset)" if reset else "")
        return updated

    def app_policy_info(self, name: str, uid: str | None = None) -> dict:
        app = self.registry.get_app(name)
        info = self.selection.get(app).snapshot(self.registry.links.get(name, []), uid)
        info["app"] = name
        return info

    # ---------------------------------------------------------------- management operations
    @contextlib.asynccontextmanager
    async def _model_lock(self, name: str) -> AsyncIterator[None]:
        """Deploys, scaling and deletions of one model run one at a time (those of different
        models run concurrently); set_model_version never waits for them."""
        lock = self._model_locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    def add_app(self, name: str, input_type: str, default_output: Any,
                slo_micros: int, **kw: Any) -> AppConfig:
        make_policy(kw.get("policy", "single"), kw.get("policy_params"))
        return self.registry.add_app(AppConfig(name, input_type, default_output, slo_micros, **kw))

    def update_app(self, name: str, **changes: Any) -> AppConfig:
        """Change an app's SLO, default output, policy or cache setting; takes effect for the
        next query."""
        return self.registry.update_app(name, **changes)

    def delete_app(self, name: str) -> None:
        """Unregister an app (its models stay deployed)."""
        self.registry.delete_app(name)

    def add_model(self, name: str, version: Any, input_type: str, *, batch_size: int = -1,
                  labels: tuple = (), runtime: dict | None = None, replicas: int = 0,
                  gpus: tuple = ()) -> ModelVersion:
        mv = ModelVersion(name, check_version(version), input_type, batch_size, tuple(labels),
                          runtime or {"kind": "external"}, replicas, tuple(gpus))
        return self.registry.add_model(mv)

    def _closure_dir(self, name: str, version: str) -> str:
        return os.path.join(self.config.state_dir, "models", name, version)

    async def deploy_closure(self, name: str, version: Any, input_type: str, closure_b64: str,
                             *, num_replicas: int = 1, batch_size: int = -1,
                             labels: tuple = (), gpus: tuple = (), warmup_input: Any = None,
                             ready_timeout_s: float = 60.0) -> ModelVersion:
        """Run a cloudpickled function as a new model version.

        The version becomes current only after one of its replicas has registered and
        answered a warm-up call: ``warmup_input`` (one input as the query API takes it) when
        given, else an empty batch that the container answers without calling the model.
        Until then the previous current version keeps serving.  A deploy that fails (no
        replica within ``ready_timeout_s``, or the warm-up input raised) changes nothing: its
        replicas are stopped and the version is forgotten.
        """
        check_name(name, "model name")
        version = check_version(version)
        _check_replicas(num_replicas, minimum=1)
        if (isinstance(ready_timeout_s, bool) or not isinstance(ready_timeout_s, (int, float))
                or not 0 < ready_timeout_s <= 3600):
            raise ConfigError(f"ready_timeout_s must be a number of seconds in (0, 3600], got "
                              f"{ready_timeout_s!r}")
        path = os.path.abspath(os.path.join(self._closure_dir(name, version), "closure.pkl"))
        mv = ModelVersion(name, version, input_type, batch_size, tuple(labels),
                          {"kind": "closure", "path": path}, num_replicas, tuple(gpus))
        warm: list = []
        if warmup_input is not None:
            try:
                warm = [PARSERS[mv.input_type](warmup_input, name)]
            except ClipperError as e:
                raise ConfigError(f"'warmup_input' is not a valid input for model {name!r}: "
                                  f"{e.cause}") from None
        try:
            blob = base64.b64decode(closure_b64, validate=True)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"'closure' must be base64 of a cloudpickled function: {e}") \
                from None
        if not blob:
            raise BadRequest("'closure' is empty; expected base64 of a cloudpickled function")
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
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(blob)
            except OSError as e:
                raise StateStoreError(f"cannot store the closure of {name}:{version} at {path}: "
                                      f"{e.strerror or e}") from None
            had_current = reg.current.get(name)
            # the first version of a model is current at once (nothing else could serve);
            # any later one only after its warm-up
            reg.add_model(mv, make_current=had_current is None)
            try:
                await self.manager.set_replicas(mv, num_replicas, self.drain)
                await self._warm_up(mv, warm, ready_timeout_s)
            except Exception:
                await self._undo_deploy(mv)
                raise
            if had_current is not None:
                reg.set_current_version(name, version)
            log.server.info("model %s:%s deployed with %d replica(s); it is the current "
                            "version%s", name, version, num_replicas,
                            f" (was {had_current})" if had_current else "")
            return reg.models[mv.key]

    async def _warm_up(self, mv: ModelVersion, inputs: list, timeout_s: float) -> None:
        """Return once a replica of ``mv`` answered a warm-up call; raise if none does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        logs = os.path.join(self.config.state_dir, "logs")
        why = "no replica registered"
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await self.wait_ready(mv.key, left):
                log.container.error("model %s:%s: %s within %.0f s; see the logs in %s",
                                    mv.name, mv.version, why, timeout_s, logs)
                raise ConfigError(f"model {mv.name}:{mv.version} was not deployed: {why} within "
                                  f"{timeout_s:.0f} s (the previous version, if any, stays "
                                  f"current); the replica logs are in {logs}")
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
            await self.manager.set_replicas(mv, 0, self.drain)
        finally:
            if mv.key in self.registry.models:
                self.registry.delete_version(mv.name, mv.version, force=True)
            shutil.rmtree(self._closure_dir(mv.name, mv.version), ignore_errors=True)

    async def set_num_replicas(self, name: str, version: str | None, n: int) -> ModelVersion:
        """Scale model version ``version`` (default: the current one) to ``n`` replicas.
        Scaling down drains each replica's batch in flight before stopping it."""
        check_name(name, "model name")
        _check_replicas(n)
        if version is not None:
            version = check_version(version)
        async with self._model_lock(name):
            mv = self.registry.get_model(name, version)
            if mv.runtime.get("kind") == "external":
                raise ConfigError(f"the replicas of model {name}:{mv.version} are started outside "
                                  "Clipper (it was registered with add_model): start or stop "
                                  "them yourself")
            mv = self.registry.update_model(mv.key, replicas=n)
            await self.manager.set_replicas(mv, n, self.drain)
        log.server.info("model %s:%s scaled to %d replica(s)", name, mv.version, n)
        return mv

    def set_batching(self, name: str, version: str | None, **changes: Any) -> BatchingConfig:
        """Change a model version's batching parameters at run time (see
        :class:`BatchingConfig`).  ``batch_size`` is stored with the model and survives a
        restart; the other parameters hold until the frontend restarts."""
        mv = self.registry.get_model(name, version)
        cfg = self.batching.get(mv.key)
        if cfg is None:  # pragma: no cover - sync_models creates one per model version
            raise ConfigError(f"model {mv.name}:{mv.version} has no batching queue")
        cfg = cfg.replace(**changes)  # validates every value before anything changes
        self.batching[mv.key] = cfg
        if cfg.batch_size != mv.batch_size:
            self.registry.update_model(mv.key, batch_size=cfg.batch_size)  # persists; syncs
        self.scheduler.configure(mv.key, cfg, self.registry.slo_s_of_model(mv.name))
        log.batching.info("model %s:%s batching set to %s", mv.name, mv.version, cfg)
        return cfg

    def batching_stats(self, name: str, version: str | None, recent: bool = False) -> dict:
        """The batching configuration and the scheduler's counters of a model version."""
        mv = self.registry.get_model(name, version)
        mq = self.scheduler.models.get(mv.key)
        if mq is None:  # pragma: no cover - sync_models creates one per model version
            raise ConfigError(f"model {mv.name}:{mv.version} has no batching queue")
        return mq.snapshot(recent=recent)

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
        await self.manager.set_replicas(mv, 0, self.drain)
        self.registry.delete_version(name, version)
        if mv.runtime.get("kind") == "closure":
            shutil.rmtree(self._closure_dir(name, version), ignore_errors=True)
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

    def containers(self) -> list[dict]:
        live = {r.instance_id: r for r in self.scheduler.replicas()}
        out = []
        for c in self.manager.containers():
            r = live.pop(c["instance_id"], None)
            c["connected"] = r is not None
            c["healthy"] = r is not None and not r.suspect and not r.draining
            out.append(c)
        for r in live.values():  # replicas started outside Clipper
            out.append({"model_name": r.key[0], "model_version": r.key[1],
                        "instance_id": r.instance_id, "pid": r.pid, "state": "running",
                        "manager": "external", "connected": True, "healthy": not r.suspect})
        return out


def _check_replicas(n: Any, minimum: int = 0) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not minimum <= n <= 256:
        raise ConfigError(f"num_replicas must be an integer {minimum}..256, got {n!r}")
    return n


def _host(h: str) -> str:
    return "127.0.0.1" if h in ("0.0.0.0", "") else (f"[{h}]" if ":" in h else h)
