"""Replica backends (every OS or Docker call that starts, stops or watches a replica) and the
backend-independent supervisor above them."""

from __future__ import annotations

from .base import (ReplicaBackend, ReplicaExit, ReplicaRef, ReplicaSpec, ReplicaStartError,
                   replica_spec)
from .local import LocalBackend
from .supervisor import Supervisor

BACKENDS = ("local", "docker", "swarm")


async def make_backend(name: str, frontend_id: str, log_dir: str) -> ReplicaBackend:
    """The backend called ``name`` (one of :data:`BACKENDS`), ready to start replicas."""
    if name == "local":
        return LocalBackend(frontend_id, log_dir)
    if name == "docker":
        from .docker import DockerBackend

        return await DockerBackend.create(frontend_id)
    if name == "swarm":
        from .swarm import SwarmBackend

        return await SwarmBackend.create(frontend_id)
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "LocalBackend", "ReplicaBackend", "ReplicaExit", "ReplicaRef",
           "ReplicaSpec", "ReplicaStartError", "Supervisor", "make_backend", "replica_spec"]
