"""Compiled vs pure scheduler core on one synthetic workload, interleaved, as a speed ratio.

Two workloads, both on virtual time (no sockets, no sleeps), each run on ``_sched_c`` (the
Cython build) and ``_sched_py`` (the same source, interpreted):

* ``core``: the sans-IO core alone, as the glue drives it per query and per batch: admission
  (``Batcher.admit``), delayed-batching decisions (``dispatch_at``), batch formation (``take``)
  and AIMD feedback (``BatchSizer.observe``), for an open-loop arrival stream of queries with
  mixed SLOs served by 4 replicas whose batch latency is 1 ms + 0.05 ms per item;
* ``scheduler``: the same stream through the asyncio glue (``Scheduler``) on a virtual loop,
  replicas answering through ``on_result``; the wire encoding is left out (a stub sends), so
  this is the glue plus the core, the part of the query path the scheduler owns.

Run: ``python benchmarks/sched_core.py [--queries 200000] [--repeat 5]``.  Prints ns per query,
median (min-max) over the repetitions, and the pure/compiled ratio; saves JSON under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import platform
import statistics
import sys
import time

from clipper_core import _sched_c, _sched_py

IMPLS = {"compiled": _sched_c, "pure": _sched_py}
A, B = 1e-3, 5e-5  # batch latency a + b * n
REPLICAS = 4
SLOS = (0.02, 0.05, 0.1)


def arrivals(n, rate):
    """Deterministic open-loop stream: (arrival time, slo) with a fixed spacing pattern."""
    t = 0.0
    gaps = (0.2, 1.7, 0.6, 1.5, 1.0)
    for i in range(n):
        t += gaps[i % len(gaps)] / rate
        yield t, SLOS[i % len(SLOS)]


def run_core(impl, n, rate):
    """Drive the sans-IO core directly, the way the glue does."""
    batcher = impl.Batcher(20_000, 0.002, 0.5)
    sizers = [impl.BatchSizer(-1, 1, 2, 0.9, 0.05, 1024) for _ in range(REPLICAS)]
    done_at = [0.0] * REPLICAS  # when each replica's batch comes back (inf = idle)
    in_flight = [None] * REPLICAS
    expired = []
    answered = 0
    Query = impl.Query
    ADMIT = impl.ADMIT
    t0 = time.perf_counter()
    for qid, (now, slo) in enumerate(arrivals(n, rate)):
        # batches that came back by now
        for i in range(REPLICAS):
            fl = in_flight[i]
            if fl is not None and done_at[i] <= now:
                s = sizers[i]
                s.observe(len(fl[0]), done_at[i] - fl[1], fl[2])
                s.busy_until = done_at[i]
                answered += len(fl[0])
                in_flight[i] = None
        q = Query(qid, None, now, now + slo, None)
        if batcher.admit(q, now, sizers, expired) != ADMIT:
            answered += 1
        for i in range(REPLICAS):
            if in_flight[i] is not None or not len(batcher.queue):
                continue
            s = sizers[i]
            if batcher.dispatch_at(now, s.current) > now:
                break
            batch = batcher.take(now, s, expired)
            if batch:
                lat = A + B * len(batch)
                s.busy_until = now + s.expected(len(batch))
                in_flight[i] = (batch, now, batcher.last_budget)
                done_at[i] = now + lat
        answered += len(expired)
        expired.clear()
    elapsed = time.perf_counter() - t0
    # what is still in flight or queued at the end counts as handled
    answered += sum(len(fl[0]) for fl in in_flight if fl is not None) + len(batcher.queue)
    return elapsed, answered


class _Handle:
    __slots__ = ("when_", "cb", "args", "dead")

    def __init__(self, when, cb, args):
        self.when_, self.cb, self.args, self.dead = when, cb, args, False

    def when(self):
        return self.when_

    def cancel(self):
        self.dead = True


class _Loop:
    def __init__(self):
        self.now = 0.0
        self.timers = []
        self.seq = itertools.count()

    def time(self):
        return self.now

    def call_at(self, when, cb, *args):
        h = _Handle(when, cb, args)
        heapq.heappush(self.timers, (when, next(self.seq), h))
        return h

    def run_until(self, t):
        timers = self.timers
        while timers and timers[0][0] <= t:
            when, _, h = heapq.heappop(timers)
            if not h.dead:
                self.now = when
                h.cb(*h.args)
        self.now = t


class _Future:
    __slots__ = ("value",)

    def __init__(self):
        self.value = None

    def done(self):
        return self.value is not None

    def set_result(self, v):
        self.value = v


def run_scheduler(impl, n, rate):
    """The same stream through the asyncio glue on a virtual loop (the wire is stubbed)."""
    from clipper_rpc import protocol as P
    from clipper_core import scheduler as S

    loop = _Loop()
    sent = {}

    # the glue encodes each batch with the wire codec; this workload measures scheduling,
    # so a stub stands in for the codec and carries the batch's size and id
    def encode(msg):
        return msg

    def send(identity, msg):
        sent[identity] = msg
        loop.call_at(loop.now + A + B * len(msg.inputs), answer, identity, msg)
        return True

    sched = S.Scheduler(send, loop=loop, clock=loop.time, impl=impl)

    def answer(identity, msg):
        sched.on_result(identity, P.Result(msg.batch_id, [0.0] * len(msg.inputs), 0))

    key = ("m", "1")
    sched.ensure_model(key, "doubles", S.BatchingConfig(), 0.05)
    for i in range(REPLICAS):
        sched.add_replica(b"r%d" % i, P.Register("m", "1", "doubles", f"r{i}", 1, {}))
        sched.touch(b"r%d" % i)  # the first heartbeat puts a replica in rotation
    real_encode = S.P.encode
    S.P.encode = encode
    try:
        Query = impl.Query
        futures = []
        t0 = time.perf_counter()
        for qid, (now, slo) in enumerate(arrivals(n, rate)):
            loop.run_until(now)
            f = _Future()
            futures.append(f)
            q = Query(qid, None, now, now + slo, f)
            if not sched.submit(key, q):
                S.answer(q, (False, "shed"))
        loop.run_until(loop.now + 1.0)
        elapsed = time.perf_counter() - t0
    finally:
        S.P.encode = real_encode
    return elapsed, sum(1 for f in futures if f.done())


WORKLOADS = {"core": run_core, "scheduler": run_scheduler}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=40_000.0,
                    help="arrivals per (virtual) second; above what 4 replicas serve")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)

    results = {w: {k: [] for k in IMPLS} for w in WORKLOADS}
    for r in range(args.repeat):
        for w, fn in WORKLOADS.items():
            order = list(IMPLS.items())
            if r % 2:
                order.reverse()  # interleave: neither goes first every time
            for name, impl in order:
                elapsed, answered = fn(impl, args.queries, args.rate)
                assert answered == args.queries, (w, name, answered)
                results[w][name].append(elapsed / args.queries * 1e9)

    print(f"scheduler core, compiled vs pure: {args.queries} queries x {args.repeat} "
          f"repetitions, interleaved; ns per query, median (min-max)")
    print(f"{'workload':10} {'compiled':>22} {'pure':>22} {'pure/compiled':>22}")
    summary = {}
    for w in WORKLOADS:
        c, p = results[w]["compiled"], results[w]["pure"]
        ratios = [pp / cc for pp, cc in zip(p, c)]
        summary[w] = {"compiled_ns": c, "pure_ns": p, "ratio": ratios,
                      "ratio_median": statistics.median(ratios)}
        fmt = lambda xs, u="": (f"{statistics.median(xs):.0f}{u} "  # noqa: E731
                                f"({min(xs):.0f}-{max(xs):.0f})")
        print(f"{w:10} {fmt(c):>22} {fmt(p):>22} "
              f"{statistics.median(ratios):>9.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"sched_core-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump({"benchmark": "sched_core", "args": vars(args), "results": summary,
                   "python": sys.version, "machine": platform.machine(),
                   "cpus": os.cpu_count(), "loadavg": os.getloadavg()}, f, indent=1)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
