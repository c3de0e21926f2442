"""The frontend's one clock: query arrivals and deadlines, the edge's lag probe, keep-alive
idleness and every scheduling decision read :func:`now`.

It is ``time.monotonic``: CLOCK_MONOTONIC, the clock the event loop's timers count on
(``loop.call_at`` takes its times), read to the microsecond.  Not ``loop.time()``: uvloop's
reads whole milliseconds, as of the start of the loop's current iteration, so it stamped
arrivals up to a millisecond early (and deadlines with them), read the loop's lag in whole
milliseconds, and decided against a 20 ms SLO and 10 ms batches on a millisecond grid.
Tests that drive a scheduler on virtual time inject their own clock.
"""

from time import monotonic as now

__all__ = ["now"]
