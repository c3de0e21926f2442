"""Replica backends (every OS or Docker call that starts, stops or watches a replica) and the
backend-independent supervisor above them."""

from __future__ import annotations

import os

from .base import (ReplicaBackend, ReplicaExit, ReplicaRef, ReplicaSpec, ReplicaStartError,
                   replica_spec)
from .local import LocalBackend
from .supervisor import Supervisor

BACKENDS = ("local", "docker", "swarm")


async def make_backend(name: str, frontend_id: str, log_dir: str, *,
                       registry_port: int | None = None, rpc_host: str = "127.0.0.1",
                       state_dir: str | None = None) -> ReplicaBackend:
    """The backend called ``name`` (one of :data:`BACKENDS`), ready to start replicas.
    ``registry_port`` (swarm only): push replica images to a registry Clipper runs on this
    port (:mod:`.registry`, storage under ``state_dir``), listening where the replicas'
    ``rpc_host`` is reached."""
    if name == "local":
        return LocalBackend(frontend_id, log_dir)
    if name == "docker":
        from .docker import DockerBackend

        return await DockerBackend.create(frontend_id)
    if name == "swarm":
        from .swarm import SwarmBackend

        registry = None
        if registry_port is not None:
            from ..config import is_loopback
            from .registry import Registry

            registry = Registry(registry_port, state_dir or os.path.dirname(log_dir),
                                "127.0.0.1" if is_loopback(rpc_host) else "0.0.0.0")
        return await SwarmBackend.create(frontend_id, registry)
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "LocalBackend", "ReplicaBackend", "ReplicaExit", "ReplicaRef",
           "ReplicaSpec", "ReplicaStartError", "Supervisor", "make_backend", "replica_spec"]
