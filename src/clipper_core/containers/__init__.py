"""Container managers: they start, restart and stop model replicas."""

from .base import ContainerManager, ReplicaSpec
from .local import LocalProcessManager

__all__ = ["ContainerManager", "ReplicaSpec", "LocalProcessManager"]
