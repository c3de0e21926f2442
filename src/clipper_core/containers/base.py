"""The container manager interface."""

from __future__ import annotations

import abc
import json
import sys
from dataclasses import dataclass

from ..config import ModelVersion


@dataclass(frozen=True)
class ReplicaSpec:
    """How to start one replica: the command line and its environment additions."""

    argv: tuple
    env: tuple = ()  # ((name, value), ...)


def replica_spec(mv: ModelVersion, rpc_address: str) -> ReplicaSpec | None:
    """The command that runs a replica of ``mv`` (None for externally started replicas)."""
    rt = mv.runtime
    common = ("--model-name", mv.name, "--model-version", mv.version,
              "--input-type", mv.input_type, "--address", rpc_address)
    if rt["kind"] == "closure":
        return ReplicaSpec((sys.executable, "-m", "model_runtimes.python_closure",
                            "--closure", rt["path"], *common))
    if rt["kind"] == "framework":
        # a replica without a GPU gets CUDA_VISIBLE_DEVICES="" so that it never tries one; the
        # manager sets it per replica where the model version has gpus
        env = () if mv.gpus else (("CUDA_VISIBLE_DEVICES", ""),)
        return ReplicaSpec((sys.executable, "-m", f"model_runtimes.{rt['framework']}",
                            "--artifact", rt["path"], "--format", rt["format"],
                            "--options", json.dumps(rt.get("options", {})), *common), env)
    if rt["kind"] == "command":
        return ReplicaSpec(tuple(rt["argv"]) + common)
    return None


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
