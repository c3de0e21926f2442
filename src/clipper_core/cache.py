"""Picks the compiled prediction cache core, or the pure twin when ``CLIPPER_PUREPYTHON=1``."""

from ._twins import PURE, load

impl = load("cache", "cache")

PredictionCache = impl.PredictionCache
Flight = impl.Flight
MISS = impl.MISS
key_prefix = impl.key_prefix
output_size = impl.output_size
ENTRY_OVERHEAD = impl.ENTRY_OVERHEAD
COMPILED = not PURE
