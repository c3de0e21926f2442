"""Picks the compiled scheduler core, or the pure twin when ``CLIPPER_PUREPYTHON=1``.

A missing extension is an error, not a silent 10x slowdown: set ``CLIPPER_PUREPYTHON=1`` to
run the pure twin on purpose.
"""

import os

PURE = os.environ.get("CLIPPER_PUREPYTHON", "") not in ("", "0")

if PURE:
    from . import _sched_py as impl
else:
    try:
        from . import _sched_c as impl
    except ImportError as e:  # pragma: no cover - exercised by the build check
        raise ImportError(
            "clipper_core._sched_c is not built: run `make build` (or `pip install -e .`), "
            "or set CLIPPER_PUREPYTHON=1 to use the slow pure-Python scheduler") from e

Query = impl.Query
DeadlineQueue = impl.DeadlineQueue
BatchSizer = impl.BatchSizer
COMPILED = not PURE
