"""The replica backend interface and the one description of a replica's launch.

A :class:`ReplicaSpec` says what one replica runs (a Python module of the runtime, a command,
or a user's image), its environment and its resources.  A :class:`ReplicaBackend` holds every
OS or Docker call: it starts a replica from a spec and returns a :class:`ReplicaRef`, stops it,
lists the replicas a previous frontend on the same state directory left running
(:meth:`~ReplicaBackend.recover`), and reports exits through :meth:`~ReplicaBackend.exits`.
Everything above (targets, restarts, draining, records) lives in the backend-independent
:class:`~clipper_core.containers.supervisor.Supervisor`.
"""

from __future__ import annotations

import abc
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

from clipper_rpc.auth import ENV_NAMES as RPC_CREDENTIAL_ENV, Credentials

from ..config import ModelVersion
from ..errors import ConfigError

ENV_INSTANCE = "CLIPPER_INSTANCE_ID"
ENV_ADDRESS = "CLIPPER_ADDRESS"
ENV_FRONTEND = "CLIPPER_FRONTEND_ID"
ENV_MODEL = "CLIPPER_MODEL_NAME"
ENV_VERSION = "CLIPPER_MODEL_VERSION"
ENV_INDEX = "CLIPPER_REPLICA_INDEX"


class ReplicaStartError(ConfigError):
    """A backend refused to start a replica (no image, no GPU driver, bad resources): a
    deploy error, not something a restart would cure."""

#: never inherited by a replica: model code must not read the operator's secrets (the
#: management token) or another replica's RPC keys (each replica gets its own in its spec)
SECRET_ENV = ("CLIPPER_MGMT_TOKEN", "CLIPPER_MGMT_TOKEN_FILE", *RPC_CREDENTIAL_ENV)


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a backend needs to start one replica.

    ``argv`` is the program and its arguments; when ``python`` is true it is the arguments
    of the replica environment's Python interpreter (the frontend's own interpreter for a
    local process, ``python3`` of the runtime image in a container).  ``image`` is a
    container image that runs with its own entrypoint (``argv`` then adds arguments); only
    container backends can run one.  ``mounts`` are host paths a container sees read-only at
    the same path.  ``cpus`` (fractional), ``memory`` (bytes) and ``gpu`` (one GPU id, or
    None for a CPU replica) are this replica's resources.
    """

    instance_id: str
    model_name: str
    model_version: str
    index: int
    rpc_address: str
    argv: tuple = ()
    python: bool = False
    image: str | None = None
    env: tuple = ()  # ((name, value), ...)
    mounts: tuple = ()
    cpus: float | None = None
    memory: int | None = None
    gpu: str | None = None
    constraints: tuple = ()  # placement constraints ("node.labels.gpu==true"); swarm only

    def environment(self) -> dict[str, str]:
        """The variables every replica gets, then the spec's own."""
        env = {ENV_INSTANCE: self.instance_id, ENV_ADDRESS: self.rpc_address,
               ENV_MODEL: self.model_name, ENV_VERSION: self.model_version,
               ENV_INDEX: str(self.index), "PYTHONUNBUFFERED": "1"}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        env.update(dict(self.env))
        return env


@dataclass(eq=False)
class ReplicaRef:
    """A running replica as its backend knows it: ``handle`` is the backend's own (a process,
    a container id); the other fields come back from :meth:`ReplicaBackend.recover`."""

    instance_id: str
    model_name: str
    model_version: str
    index: int
    rpc_address: str
    handle: Any = field(default=None, compare=False, repr=False)
    pid: int | None = None
    adopted: bool = False


@dataclass(frozen=True)
class ReplicaExit:
    ref: ReplicaRef
    code: int | None  # None: unknown (a process this frontend did not start)
    reason: str


class ReplicaBackend(abc.ABC):
    """Starts, stops, finds and watches replicas.  The only place with OS or Docker calls."""

    #: short name: "local", "docker"
    name = "?"

    def __init__(self) -> None:
        self._exits: asyncio.Queue[ReplicaExit] = asyncio.Queue()

    @abc.abstractmethod
    async def start(self, spec: ReplicaSpec) -> ReplicaRef:
        """Start one replica; raise :class:`ReplicaStartError` when the start is refused."""

    @abc.abstractmethod
    async def stop(self, ref: ReplicaRef, grace_s: float) -> None:
        """Ask the replica to stop, kill it after ``grace_s``, return once it is gone."""

    @abc.abstractmethod
    async def recover(self) -> list[ReplicaRef]:
        """The replicas that a previous frontend on this state directory left running."""

    @abc.abstractmethod
    def describe(self, ref: ReplicaRef) -> dict:
        """What an operator wants to see of one replica (pid or container id, image...)."""

    @abc.abstractmethod
    async def logs(self, ref: ReplicaRef, tail: int = 200) -> str:
        """The last ``tail`` lines the replica wrote."""

    async def exits(self) -> AsyncIterator[ReplicaExit]:
        """Every replica exit, as it happens (replicas stopped through :meth:`stop` too)."""
        while True:
            yield await self._exits.get()

    def _exited(self, ref: ReplicaRef, code: int | None, reason: str) -> None:
        self._exits.put_nowait(ReplicaExit(ref, code, reason))

    async def close(self) -> None:
        """Release what the backend holds (event streams, clients); replicas are the
        supervisor's to stop."""


def check_gpus(gpus: Any) -> tuple:
    """GPU ids of a model: non-negative integers (or "cpu" for a CPU replica among GPU ones)."""
    if gpus is None:
        return ()
    if isinstance(gpus, (str, bytes)) or not isinstance(gpus, (list, tuple)):
        raise ConfigError(f"gpus must be a list of GPU ids (integers >= 0, or \"cpu\"), got "
                          f"{gpus!r}")
    out = []
    for g in gpus:
        if isinstance(g, bool):
            ok = False
        elif isinstance(g, int):
            ok = 0 <= g < 1024
        elif isinstance(g, str):
            ok = g.lower() == "cpu" or (g.isdigit() and int(g) < 1024)
        else:
            ok = False
        if not ok:
            raise ConfigError(f"gpus must be a list of GPU ids (integers >= 0, or \"cpu\" for "
                              f"a CPU replica), got {g!r} in {list(gpus)!r}")
        out.append("cpu" if isinstance(g, str) and g.lower() == "cpu" else str(int(g)))
    return tuple(out)


def replica_spec(mv: ModelVersion, rpc_address: str, instance_id: str, index: int,
                 credentials: Credentials | None = None) -> ReplicaSpec | None:
    """The spec of replica ``index`` of ``mv`` (None for externally started replicas).

    ``credentials`` (the RPC's CURVE keys) go into the replica's environment, never its
    command line, which every local user can read."""
    rt = mv.runtime
    common = ("--model-name", mv.name, "--model-version", mv.version,
              "--input-type", mv.input_type, "--address", rpc_address)
    gpu = None
    if mv.gpus:
        g = str(mv.gpus[index % len(mv.gpus)])
        gpu = None if g.lower() == "cpu" else g
    res = {"cpus": rt.get("cpus"), "memory": rt.get("memory"), "gpu": gpu,
           "constraints": tuple(rt.get("constraints") or ())}
    ids = dict(instance_id=instance_id, model_name=mv.name, model_version=mv.version,
               index=index, rpc_address=rpc_address)
    env = tuple(credentials.to_env().items()) if credentials is not None else ()
    if gpu is None:
        # a replica is given a GPU only through the model's gpus: any other sees none, so a
        # framework runtime never tries one
        env += (("CUDA_VISIBLE_DEVICES", ""),)
    res["env"] = env
    kind = rt.get("kind")
    if kind == "closure":
        return ReplicaSpec(**ids, argv=("-m", "model_runtimes.python_closure", "--closure",
                                        rt["path"], *common), python=True,
                           mounts=(rt["path"],), **res)
    if kind == "framework":
        return ReplicaSpec(**ids, argv=("-m", f"model_runtimes.{rt['framework']}", "--artifact",
                                        rt["path"], "--format", rt["format"], "--options",
                                        json.dumps(rt.get("options", {})), *common),
                           python=True, mounts=(rt["path"],), **res)
    if kind == "command":
        return ReplicaSpec(**ids, argv=tuple(rt["argv"]) + common, **res)
    if kind == "image":  # its entrypoint takes the flags every runtime in model_runtimes takes
        return ReplicaSpec(**ids, image=rt["image"], argv=tuple(rt.get("args", ())) + common,
                           **res)
    return None


def replica_environment(inherited: Mapping[str, str], spec: ReplicaSpec) -> dict[str, str]:
    """A replica's environment: ``inherited`` without :data:`SECRET_ENV` (the management
    token stays with the frontend), plus what the spec gives every replica."""
    env = {k: v for k, v in inherited.items() if k not in SECRET_ENV}
    env.update(spec.environment())
    return env
