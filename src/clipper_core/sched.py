"""Picks the compiled scheduler core, or the pure twin when ``CLIPPER_PUREPYTHON=1``."""

from ._twins import PURE, load

impl = load("sched", "scheduler")

Query = impl.Query
DeadlineQueue = impl.DeadlineQueue
BatchSizer = impl.BatchSizer
COMPILED = not PURE
