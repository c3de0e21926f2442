"""The container manager interface."""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass
from typing import Mapping

from clipper_rpc.auth import ENV_NAMES as RPC_CREDENTIAL_ENV, Credentials

from ..config import ModelVersion

#: never inherited by a replica: model code must not read the operator's secrets (the
#: management token) or another replica's RPC keys (each replica gets its own in its spec)
SECRET_ENV = ("CLIPPER_MGMT_TOKEN", "CLIPPER_MGMT_TOKEN_FILE", *RPC_CREDENTIAL_ENV)


@dataclass(frozen=True)
class ReplicaSpec:
    """How to start one replica: the command line and its environment additions."""

    argv: tuple
    env: tuple = ()  # ((name, value), ...)


def replica_spec(mv: ModelVersion, rpc_address: str,
                 credentials: Credentials | None = None) -> ReplicaSpec | None:
    """The command that runs a replica of ``mv`` (None for externally started replicas).

    ``credentials`` (the RPC's CURVE keys) go into the replica's environment, never its
    command line, which every local user can read."""
    rt = mv.runtime
    common = ("--model-name", mv.name, "--model-version", mv.version,
              "--input-type", mv.input_type, "--address", rpc_address)
    env = tuple(credentials.to_env().items()) if credentials is not None else ()
    if rt["kind"] == "closure":
        return ReplicaSpec((sys.executable, "-m", "model_runtimes.python_closure",
                            "--closure", rt["path"], *common), env)
    if rt["kind"] == "command":
        return ReplicaSpec(tuple(rt["argv"]) + common, env)
    return None


def replica_environment(inherited: Mapping[str, str], spec: ReplicaSpec) -> dict[str, str]:
    """A replica's environment: ``inherited`` without :data:`SECRET_ENV`, plus the spec's."""
    env = {k: v for k, v in inherited.items() if k not in SECRET_ENV}
    env.update(dict(spec.env))
    return env


class ContainerManager(abc.ABC):
    """Keeps the number of running replicas of each model version at its target."""

    @abc.abstractmethod
    async def set_replicas(self, mv: ModelVersion, n: int) -> None:
        """Start or stop replicas of ``mv`` until ``n`` run."""

    @abc.abstractmethod
    def containers(self) -> list[dict]:
        """One dict per managed replica: model, version, instance id, state, restarts."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every replica this manager started."""
