"""Picks the compiled prediction cache core, or the pure twin when ``CLIPPER_PUREPYTHON=1``.

As for the scheduler (``sched.py``), a missing extension is an error, not a silent slowdown:
set ``CLIPPER_PUREPYTHON=1`` to run the pure twin on purpose.
"""

import os

PURE = os.environ.get("CLIPPER_PUREPYTHON", "") not in ("", "0")

if PURE:
    from . import _cache_py as impl
else:
    try:
        from . import _cache_c as impl
    except ImportError as e:  # pragma: no cover - exercised by the build check
        raise ImportError(
            "clipper_core._cache_c is not built: run `make build` (or `pip install -e .`), "
            "or set CLIPPER_PUREPYTHON=1 to use the slow pure-Python cache") from e

PredictionCache = impl.PredictionCache
Flight = impl.Flight
MISS = impl.MISS
key_prefix = impl.key_prefix
output_size = impl.output_size
ENTRY_OVERHEAD = impl.ENTRY_OVERHEAD
COMPILED = not PURE
