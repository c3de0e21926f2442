"""clipper-bench: a load generator and latency reporter for prediction endpoints.

Layers, one module each: ``stats`` (percentiles, stability rule), ``schedule``
(open-loop arrivals), ``target`` (request bodies, answer flags), ``loadgen``
(worker processes sending the load), ``serverstats`` (Clipper's /stats
breakdown), ``runner`` (a sweep of levels and its accounting), ``output``
(table, JSON, CSV, plot, progress), ``cli`` (the console script) and
``testing`` (a fake target server).
"""

from .runner import BenchConfig, LevelResult, SweepResult, run_level, run_sweep
from .target import BenchConfigError, Target, build_target

__all__ = [
    "BenchConfig",
    "BenchConfigError",
    "LevelResult",
    "SweepResult",
    "Target",
    "build_target",
    "run_level",
    "run_sweep",
]
