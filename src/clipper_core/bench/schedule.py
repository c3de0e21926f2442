"""Arrival schedules for open-loop load.

A schedule is an endless iterator of send times, in seconds after the start of a
load level. The load generator sleeps until each time and then sends, whether or
not earlier requests have been answered; latency is then measured from these
scheduled times, so a slow server (or a slow generator) shows up as latency
instead of silently lowering the offered load (no "coordinated omission").

Splitting over worker processes keeps the aggregate schedule intact:

* constant: worker ``w`` of ``W`` takes arrivals ``w, w + W, w + 2W, ...`` of the
  single schedule ``i / rate``, so the workers interleave exactly;
* Poisson: each worker draws its own Poisson process of rate ``rate / W``; the
  superposition of independent Poisson processes is a Poisson process of the
  summed rate.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

__all__ = ["ARRIVALS", "arrivals", "constant_arrivals", "poisson_arrivals", "worker_seed"]

ARRIVALS = ("poisson", "constant")


def constant_arrivals(rate: float, *, worker: int = 0, workers: int = 1) -> Iterator[float]:
    """Evenly spaced arrivals ``i / rate``, the share of ``worker`` out of ``workers``."""
    _check(rate, worker, workers)
    # i / rate rather than a running sum: no drift from accumulated rounding.
    return ((worker + workers * k) / rate for k in itertools.count())


def poisson_arrivals(rate: float, seed: int | str, *, worker: int = 0, workers: int = 1) -> Iterator[float]:
    """Poisson arrivals of total ``rate``, the share of ``worker``; reproducible by ``seed``."""
    _check(rate, worker, workers)
    rng = random.Random(worker_seed(seed, worker))
    lam = rate / workers

    def gen() -> Iterator[float]:
        t = 0.0
        while True:
            t += rng.expovariate(lam)
            yield t

    return gen()


def arrivals(kind: str, rate: float, seed: int | str, *, worker: int = 0, workers: int = 1) -> Iterator[float]:
    """The schedule named ``kind`` (``"poisson"`` or ``"constant"``)."""
    if kind == "poisson":
        return poisson_arrivals(rate, seed, worker=worker, workers=workers)
    if kind == "constant":
        return constant_arrivals(rate, worker=worker, workers=workers)
    raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {kind!r}")


def worker_seed(seed: int | str, worker: int) -> str:
    """The seed of one worker's random stream, derived from the run's seed."""
    # random.Random hashes str seeds with SHA-512: stable across runs and platforms.
    return f"clipper-bench/{seed}/{worker}"


def _check(rate: float, worker: int, workers: int) -> None:
    if not rate > 0:
        raise ValueError(f"arrival rate must be > 0 requests/s, got {rate!r}")
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker index must lie in [0, {workers}), got {worker!r}")
