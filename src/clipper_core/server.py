"""ClipperServer: the query frontend, the management API and the RPC server in one process.

Lifecycle in the style of aiohttp's AppRunner/TCPSite: ``await start()`` binds everything,
``await stop()`` answers what is pending, stops the replicas and closes the sockets.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
from typing import Any

from aiohttp import web

from . import log
from .cache import PredictionCache
from .config import AppConfig, ModelVersion, ServerConfig, check_name, check_version
from .containers.local import LocalProcessManager
from .errors import BadRequest, ConfigError, StateStoreError
from .frontend import make_app as make_query_app
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

    # ---------------------------------------------------------------- lifecycle
    def _lock_state_dir(self) -> None:
        os.makedirs(self.config.state_dir, exist_ok=True)
        path = os.path.join(self.config.state_dir, "clipper.lock")
        f = open(path, "a+")
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
        rpc_endpoint = self.rpc.start()
        self.manager = LocalProcessManager(
            rpc_endpoint, os.path.join(cfg.state_dir, "logs"),
            on_exit=lambda iid, why: self.scheduler.remove_replica(iid, why))
        self.selection = Selection(self.store)
        self.cache = PredictionCache(cfg.cache_bytes)
        self.processor = QueryProcessor(self.registry, self.scheduler, self.cache,
                                        selection=self.selection)
        self.metrics = Metrics(self.processor)
        self.metrics.cache_stats = self.cache.stats
        self.registry.listeners.append(lambda *_: self.sync_models())
        self.registry.listeners.append(self._on_registry_event)
        self.selection.start(self._app_exists)
        self.sync_models()

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
        # restore: every model version with replicas gets them back
        for mv in list(self.registry.models.values()):
            if mv.replicas > 0:
                await self.manager.set_replicas(mv, mv.replicas, self.drain)
        if cfg.demo:
            from .demo import ensure_demo

            await ensure_demo(self)
        # written last: its presence tells scripts (and `clipper stop`) that Clipper is up
        tmp = os.path.join(cfg.state_dir, ENDPOINTS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.endpoints, f)
        os.replace(tmp, os.path.join(cfg.state_dir, ENDPOINTS_FILE))
        self.started.set()
        log.server.info("Clipper is up: queries on %s, management on %s, RPC on %s",
                        self.endpoints["query"], self.endpoints["management"], rpc_endpoint)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
            if cfg is None or cfg.batch_size != mv.batch_size:
                cfg = self.batching[key] = BatchingConfig(
                    batch_size=mv.batch_size, aimd_step=self.config.aimd_step,
                    aimd_backoff=self.config.aimd_backoff, aimd_cap=self.config.aimd_cap)
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
        r.suspect = True  # no new batches
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
    def add_app(self, name: str, input_type: str, default_output: Any,
                slo_micros: int, **kw: Any) -> AppConfig:
        make_policy(kw.get("policy", "single"), kw.get("policy_params"))
        return self.registry.add_app(AppConfig(name, input_type, default_output, slo_micros, **kw))

    def add_model(self, name: str, version: Any, input_type: str, *, batch_size: int = -1,
                  labels: tuple = (), runtime: dict | None = None, replicas: int = 0,
                  gpus: tuple = ()) -> ModelVersion:
        mv = ModelVersion(name, check_version(version), input_type, batch_size, tuple(labels),
                          runtime or {"kind": "external"}, replicas, tuple(gpus))
        return self.registry.add_model(mv)

    async def deploy_closure(self, name: str, version: Any, input_type: str, closure_b64: str,
                             *, num_replicas: int = 1, batch_size: int = -1,
                             labels: tuple = (), gpus: tuple = (),
                             ready_timeout_s: float = 60.0) -> ModelVersion:
        check_name(name, "model name")
        version = check_version(version)
        try:
            blob = base64.b64decode(closure_b64, validate=True)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"'closure' must be base64 of a cloudpickled function: {e}") \
                from None
        if num_replicas < 1:
            raise ConfigError("num_replicas must be at least 1 to deploy a closure")
        directory = os.path.join(self.config.state_dir, "models", name, version)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "closure.pkl")
        with open(path, "wb") as f:
            f.write(blob)
        # the new version becomes current only once a replica serves it
        has_current = name in self.registry.current
        mv = ModelVersion(name, version, input_type, batch_size, tuple(labels),
                          {"kind": "closure", "path": os.path.abspath(path)}, num_replicas,
                          tuple(gpus))
        self.registry.add_model(mv, make_current=not has_current)
        await self.manager.set_replicas(mv, num_replicas, self.drain)
        if not await self.wait_ready(mv.key, ready_timeout_s):
            log.container.error("model %s:%s: no replica registered within %.0f s; see the "
                                "logs in %s", name, version, ready_timeout_s,
                                os.path.join(self.config.state_dir, "logs"))
            raise ConfigError(f"model {name}:{version} was deployed but no replica registered "
                              f"within {ready_timeout_s:.0f} s; its logs are in "
                              f"{os.path.join(self.config.state_dir, 'logs')}")
        if has_current:
            self.registry.set_current_version(name, version)
        return mv

    async def set_num_replicas(self, name: str, version: str | None, n: int) -> ModelVersion:
        mv = self.registry.get_model(name, version)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 256:
            raise ConfigError(f"num_replicas must be an integer 0..256, got {n!r}")
        mv = self.registry.update_model(mv.key, replicas=n)
        await self.manager.set_replicas(mv, n, self.drain)
        return mv

    def containers(self) -> list[dict]:
        live = {r.instance_id: r for r in self.scheduler.replicas()}
        out = []
        for c in self.manager.containers():
            r = live.pop(c["instance_id"], None)
            c["connected"] = r is not None
            c["healthy"] = r is not None and not r.suspect
            out.append(c)
        for r in live.values():  # replicas started outside Clipper
            out.append({"model_name": r.key[0], "model_version": r.key[1],
                        "instance_id": r.instance_id, "pid": r.pid, "state": "running",
                        "manager": "external", "connected": True, "healthy": not r.suspect})
        return out


def _host(h: str) -> str:
    return "127.0.0.1" if h in ("0.0.0.0", "") else (f"[{h}]" if ":" in h else h)
