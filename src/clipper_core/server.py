"""ClipperServer: the query frontend, the management API and the RPC server in one process.

Lifecycle in the style of aiohttp's AppRunner/TCPSite: ``await start()`` binds everything,
``await stop()`` answers what is pending, stops the replicas and closes the sockets.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import uuid
from typing import Any

from aiohttp import web

from . import edge, log
from .cache import PredictionCache
from .config import AppConfig, ModelVersion, ServerConfig, check_version
from .containers import make_backend
from .containers.base import check_gpus
from .cluster import Cluster
from .containers.supervisor import Supervisor
from .deployment import DeploymentController
from .errors import ConfigError, StateStoreError
from .frontend import DirectPredict, make_app as make_query_app
from .http import BODY_TIMEOUT
from .legacy_rpc import LegacyRpcServer
from .limits import raise_open_file_limit
from .management import allow_hosts as allow_mgmt_hosts, make_app as make_mgmt_app
from .metrics import Metrics
from .policies import make_policy
from .predict import QueryProcessor
from .registry import Registry
from .rpc import (CREDENTIALS as RPC_CREDENTIALS, KEYS_DIR as RPC_KEYS_DIR, RpcServer,
                  local_rpc_address, new_cluster_keys, rpc_keys)
from .scheduler import BatchingConfig, Scheduler
from .selection import Selection
from .state import open_store
from .tasks import cancel_and_wait

ENDPOINTS_FILE = "endpoints.json"
#: aiohttp's own keep-alive timeout: longer than any the edge keeps (it closes idle
#: connections itself), so that aiohttp never closes one
AIOHTTP_KEEPALIVE_S = 10 * 365 * 86400.0


class ClipperServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.started = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._listeners: list = []  # (asyncio.Server, edge.Edge)
        self._lockfile = None
        self.endpoints: dict[str, Any] = {}
        self.batching: dict[tuple, BatchingConfig] = {}
        self._wrote_endpoints = False
        #: several frontends sharing the store: one of them deploys (cluster.py); None: this
        #: frontend is its own deployer
        self.cluster: Cluster | None = None

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
        self.store = open_store(cfg.state, cfg.state_dir)
        self.registry = Registry(self.store)
        loop = asyncio.get_running_loop()
        self.legacy_rpc = (LegacyRpcServer(cfg.legacy_rpc_address)
                           if cfg.legacy_rpc_address else None)
        # several frontends use the cluster's keys, so that one replica serves them all
        cluster_keys = (json.loads(self.store.shared_value("rpc_keys", new_cluster_keys))
                        if self.store.shared and cfg.rpc_auth else None)
        rpc_keys_, rpc_creds = (rpc_keys(cfg.state_dir, cluster_keys) if cfg.rpc_auth
                                else (None, None))
        self.rpc = RpcServer(
            cfg.rpc_address,
            lambda send: Scheduler(send, queue_capacity=cfg.queue_capacity, loop=loop),
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            heartbeat_timeout_s=cfg.heartbeat_timeout_s, keys=rpc_keys_,
            max_message_bytes=cfg.rpc_max_message_bytes,
            route=self.legacy_rpc.route if self.legacy_rpc else None,
            # local processes reach this frontend through a Unix socket; not with several
            # frontends, whose replicas connect to every frontend's listed TCP endpoint
            local_address=(local_rpc_address(cfg.state_dir)
                           if cfg.backend == "local" and not self.store.shared else None))
        self.scheduler = self.rpc.scheduler
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
        legacy_endpoint = None
        if self.legacy_rpc is not None:
            try:
                legacy_endpoint = self.legacy_rpc.start(self.scheduler)
            except Exception as e:  # zmq.ZMQError
                raise ConfigError(f"cannot bind the legacy RPC on {cfg.legacy_rpc_address}: "
                                  f"{e}") from None
        self.frontend_id = _frontend_id(cfg.state_dir)
        # replicas carry their owner's id, by which a deployer finds them after a crash:
        # this frontend's, or with several frontends the cluster's, so that any frontend
        # that takes over deployment re-adopts them
        owner = (self.store.shared_value("cluster_id", lambda: uuid.uuid4().hex[:16])
                 if self.store.shared else self.frontend_id)
        self.backend = await make_backend(cfg.backend, owner,
                                          os.path.join(cfg.state_dir, "logs"),
                                          registry_port=cfg.registry_port,
                                          rpc_host=cfg.rpc_host, state_dir=cfg.state_dir)
        self.supervisor = Supervisor(
            self.backend, self.rpc.local_endpoint or rpc_endpoint, store=self.store,
            on_exit=lambda iid, why: self.scheduler.remove_replica(iid, why),
            rpc_credentials=rpc_creds, any_address=self.store.shared)
        self.supervisor.start()
        if self.store.shared:
            self.cluster = Cluster(cfg.state, self.frontend_id, lease_s=cfg.deployer_lease_s,
                                   on_role=self._on_role, on_frontends=self.rpc.set_frontends)
        self.deployments = DeploymentController(self.registry, self.scheduler, self.supervisor,
                                                cfg.state_dir, self.cluster)

        nofile = raise_open_file_limit()
        # file descriptors: the management port keeps 64 connections of its own, and 256 stay
        # free for replicas, the state store and logs, whatever the query port is sent
        max_query_conns = min(cfg.max_connections, max(16, nofile - 256 - 64))
        query = await self._serve(make_query_app(self.processor, cfg.max_body_bytes,
                                                 self.metrics),
                                  cfg.query_host, cfg.query_port, max_query_conns,
                                  on_refused=self.metrics.refused, reuse_port=cfg.reuse_port,
                                  # unread refusals (edge.py) answer from the registry
                                  app_lookup=self.processor.registry.apps.get,
                                  new_query_id=self.processor.new_query_id,
                                  direct=DirectPredict(self.processor, self.metrics))
        mgmt_app = make_mgmt_app(self, cfg.mgmt_token, cfg.mgmt_max_body_bytes)
        mgmt = await self._serve(mgmt_app, cfg.mgmt_host, cfg.mgmt_port, 64)
        allow_mgmt_hosts(mgmt_app, cfg.mgmt_host, mgmt)
        self.endpoints = {"query": f"http://{_host(cfg.query_host)}:{query}",
                          "management": f"http://{_host(cfg.mgmt_host)}:{mgmt}",
                          "rpc": rpc_endpoint, "pid": os.getpid(),
                          **({"rpc_local": self.rpc.local_endpoint}
                             if self.rpc.local_endpoint else {}),
                          **({"legacy_rpc": legacy_endpoint} if legacy_endpoint else {}),
                          "backend": cfg.backend, "frontend_id": self.frontend_id,
                          "state_dir": os.path.abspath(cfg.state_dir)}
        if rpc_creds is not None:  # for replicas started by hand: serve(credentials=...)
            self.endpoints["rpc_credentials"] = os.path.abspath(
                os.path.join(cfg.state_dir, RPC_KEYS_DIR, RPC_CREDENTIALS))
        if self.store.shared:  # other frontends' changes
            self._watch = asyncio.ensure_future(self.store.watch(self._on_remote_change))
        if self.cluster is not None:
            # announce this frontend; the one that holds (or takes) the deployer lease
            # restores the replicas (see _on_role)
            await self.cluster.join({k: self.endpoints[k] for k in ("rpc", "query",
                                                                     "management", "pid")})
            self.endpoints["cluster_id"] = owner
        else:
            await self._restore()
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

    async def _restore(self) -> None:
        """Every model version with replicas gets them back, re-adopting the replica
        processes that a crashed frontend (or a dead deployer) left running."""
        counts = await self.deployments.restore()
        if any(counts.values()):
            log.server.info("restored %d apps and %d model versions: %d replicas re-adopted, "
                            "%d started, %d stale ones stopped", len(self.registry.apps),
                            len(self.registry.models), counts["adopted"], counts["started"],
                            counts["stopped"])

    def cluster_info(self) -> dict | None:
        """Several frontends: this one's id, whether it deploys, who does, the live ones."""
        c = self.cluster
        if c is None:
            return None
        return {"cluster_id": self.endpoints.get("cluster_id"), "frontend_id": c.id,
                "deployer": c.deployer, "deployer_id": c.deployer_id,
                "lease_s": c.lease_s, "frontends": c.members}

    async def _on_role(self, deployer: bool) -> None:
        """This frontend took the deployer lease (restore, re-adopting what runs) or lost it
        (stop supervising; the replicas go on serving every frontend)."""
        if deployer:
            await self._restore()
        else:
            await self.supervisor.detach()

    async def _serve(self, app: web.Application, host: str, port: int,
                     max_connections: int, on_refused=None, reuse_port: bool = False,
                     app_lookup=None, new_query_id=None, direct=None) -> int:
        cfg = self.config
        # the edge (edge.py) holds the listener's connections and requests and decides what
        # is let in; it wraps aiohttp's protocol
        gate = edge.Edge(name=f"{host}:{port}", max_connections=max_connections,
                         max_in_flight=cfg.max_in_flight, idle_timeout_s=cfg.idle_timeout_s,
                         keepalive_timeout_s=cfg.keepalive_timeout_s, on_refused=on_refused,
                         app_lookup=app_lookup, new_query_id=new_query_id, direct=direct)
        gate.install(app)
        app[BODY_TIMEOUT] = cfg.body_timeout_s
        # the edge closes idle keep-alive connections (aiohttp does not see the requests
        # the edge answers itself, and would close a busy connection as idle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=AIOHTTP_KEEPALIVE_S)
        await runner.setup()
        try:
            srv = await asyncio.get_running_loop().create_server(
                gate.start(runner.server), host, port, backlog=1024, reuse_address=True,
                reuse_port=reuse_port or None)
        except OSError as e:
            gate.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self._runners.append(runner)
        self._listeners.append((srv, gate))
        return srv.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        log.server.info("shutting down")
        for srv, gate in self._listeners:
            srv.close()
            gate.close()
        if getattr(self, "_watch", None) is not None:
            await cancel_and_wait(self._watch)
        for runner in self._runners:
            await runner.shutdown()
        if hasattr(self, "scheduler"):
            self.scheduler.fail_all("Clipper is shutting down")
        if hasattr(self, "selection"):
            try:
                await self.selection.close(self._app_exists)  # learned weights survive
            except Exception:
                log.state.exception("policy state not written at shutdown")
        # several frontends: the others go on with the replicas (one of them deploys next),
        # unless this is the last one
        last = True
        if self.cluster is not None:
            last = not await self.cluster.leave()
        if hasattr(self, "supervisor"):
            if last:
                await self.supervisor.close()
                if self.cluster is not None:  # those a deployer that died left running
                    await self.supervisor.stop_leftovers()
            else:
                await self.supervisor.detach()
                log.server.info("the other frontends keep the replicas")
        if hasattr(self, "backend"):
            await self.backend.close()
        if hasattr(self, "rpc"):
            await self.rpc.close(shutdown_replicas=last)
        if getattr(self, "legacy_rpc", None) is not None:
            await self.legacy_rpc.close()
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
                self.cache.drop_version(*key)  # a redeployed name:version starts afresh
                self.batching.pop(key, None)

    def wait_ready(self, key: tuple, timeout_s: float):
        """True once a replica of model version ``key`` has registered."""
        return self.deployments.wait_ready(key, timeout_s)

    # ---------------------------------------------------------------- selection policies
    def _app_exists(self, name: str) -> bool:
        return name in self.registry.apps

    def _on_registry_event(self, event: str, name: Any) -> None:
        if event == "app_deleted":
            self.selection.forget(name)
        elif event == "reloaded":  # another frontend's change (see _on_remote_change)
            self._apply_remote(name)

    # ---------------------------------------------------------------- several frontends
    def _on_remote_change(self, notice: dict) -> None:
        """A change notice from another frontend sharing the state store."""
        kind = notice.get("kind")
        if kind in ("registry", "resync"):
            self.registry.reload()
        if kind == "resync":
            for name in list(self.selection.apps):
                self.selection.reload(name)
        elif kind == "policy" and isinstance(notice.get("app"), str):
            self.selection.reload(notice["app"])

    def _apply_remote(self, changed: dict) -> None:
        for name in changed["apps_deleted"]:  # its stored state is gone with it
            self.selection.drop_local(name)
        for name in changed["apps"]:
            app = self.registry.apps[name]
            s = self.selection.apps.get(name)
            if s is not None and (s.config.policy, s.config.policy_params) != (
                    app.policy, app.policy_params):
                self.selection.drop_local(name)  # the other frontend reset the stored state
        if changed["models"]:
            asyncio.ensure_future(self.deployments.reconcile(changed["models"]))

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

    def update_app(self, name: str, **changes: Any) -> AppConfig:
        """Change an app's SLO, default output, policy or cache setting; takes effect for the
        next query."""
        if "policy" in changes or "policy_params" in changes:
            app = self.registry.get_app(name)
            make_policy(changes.get("policy", app.policy),  # ConfigError names what is wrong
                        changes.get("policy_params", app.policy_params))
        return self.registry.update_app(name, **changes)

    def delete_app(self, name: str) -> None:
        """Unregister an app (its models stay deployed)."""
        self.registry.delete_app(name)

    def add_model(self, name: str, version: Any, input_type: str, *, batch_size: int = -1,
                  labels: tuple = (), runtime: dict | None = None, replicas: int = 0,
                  gpus: tuple = ()) -> ModelVersion:
        mv = ModelVersion(name, check_version(version), input_type, batch_size, tuple(labels),
                          runtime or {"kind": "external"}, replicas, check_gpus(gpus))
        return self.registry.add_model(mv)

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


def _frontend_id(state_dir: str) -> str:
    """This state directory's frontend id: labels its replicas, so that a restarted frontend
    re-adopts its own and nothing else."""
    path = os.path.join(state_dir, "frontend_id")
    try:
        with open(path) as f:
            fid = f.read().strip()
        if fid:
            return fid
    except OSError:
        pass
    fid = uuid.uuid4().hex[:16]
    try:
        with open(path, "w") as f:
            f.write(fid)
    except OSError as e:
        raise StateStoreError(f"cannot write {path}: {e.strerror or e}") from None
    return fid


def _host(h: str) -> str:
    return "127.0.0.1" if h in ("0.0.0.0", "") else (f"[{h}]" if ":" in h else h)
