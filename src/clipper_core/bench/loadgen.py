"""Load generation: closed-loop users and open-loop arrival schedules.

The generator runs in ``--workers`` processes (``multiprocessing`` with the
*spawn* start method), each with its own event loop and ``aiohttp.ClientSession``;
the concurrency, the rate and the request quota of a level are split between
them. ``--workers 0`` runs one generator on the caller's own loop instead (tests,
debugging).

Timing
    All workers of a level share one start time ``t0`` on ``time.monotonic()``,
    which on Linux is CLOCK_MONOTONIC and so comparable across processes.
    Warm-up runs from ``t0`` to ``ms = t0 + warmup``; measurement windows follow
    back to back. At every window boundary a worker hands the parent the
    requests *completed* since the previous boundary (boundary 0 discards the
    warm-up's completions) together with its CPU time, so the parent can judge
    stability while the level runs and tell the workers when to stop.

What is recorded per request
    ``send`` (scheduled send time minus ``ms``; in the closed loop the actual
    send time), ``lat`` (completion minus *scheduled* send time), ``lag``
    (actual minus scheduled send time: how late the generator was, including a
    wait for a free in-flight slot), the HTTP status or a negative code for
    failures below HTTP, and the answer's default / cache-hit flags.

Messages from a worker to the parent (tuples)
    ``("ready", wid)``; ``("batch", wid, b, cpu_s, payload)`` at boundary ``b``;
    ``("final", wid, cpu_s, payload, sent)`` after the level drained;
    ``("error", wid, traceback_text)``.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import queue
import resource
import signal
import traceback
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

import aiohttp

from ..tasks import cancel_and_wait
from .schedule import arrivals
from .target import Target, answer_flags

__all__ = [
    "CLIENT_ERROR",
    "CONNECTION_ERROR",
    "STATUS_NAMES",
    "TIMEOUT",
    "InProcessPool",
    "LevelPlan",
    "Payload",
    "ProcessPool",
    "WorkerError",
    "cpu_seconds",
    "run_worker_level",
    "share",
]

CONNECTION_ERROR = -1
TIMEOUT = -2
CLIENT_ERROR = -3
STATUS_NAMES = {CONNECTION_ERROR: "connection_error", TIMEOUT: "timeout", CLIENT_ERROR: "client_error"}

#: (send, lat, lag, status, flags) as raw bytes of arrays 'd', 'd', 'd', 'h', 'B'.
Payload = tuple[bytes, bytes, bytes, bytes, bytes]
EMPTY_PAYLOAD: Payload = (b"", b"", b"", b"", b"")

# Windows per level when a run is bounded by --requests rather than by windows.
UNBOUNDED_WINDOWS = 2**31 - 1
# How often a worker looks at the shared stop signal between window boundaries.
_POLL_S = 0.1
# Arrivals launched back to back before the scheduler yields to the sending tasks.
_BURST = 64


class WorkerError(RuntimeError):
    """A load generator worker died or failed."""


@dataclass(frozen=True)
class LevelPlan:
    """One load level, as every worker receives it (picklable)."""

    mode: str  # "closed" or "open"
    value: float  # total concurrency (closed) or total rate in requests/s (open)
    arrivals: str = "poisson"
    seed: str = "0"
    warmup: float = 0.0
    window: float = 1.0
    windows: int = 1  # stop after this many windows unless the parent says sooner
    requests: int | None = None  # measured requests in all; then windows are unbounded
    timeout: float = 30.0
    max_inflight: int = 10000  # open loop, all workers together

    @property
    def windowed(self) -> bool:
        return self.requests is None


def share(total: int, parts: int, index: int) -> int:
    """Worker ``index``'s part of ``total`` split as evenly as integers allow."""
    base, extra = divmod(int(total), parts)
    return base + (1 if index < extra else 0)


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _Recorder:
    """Per-request records in completion order (so ``end`` is ascending)."""

    __slots__ = ("end", "flags", "lag", "lat", "ms", "send", "status")

    def __init__(self, ms: float) -> None:
        self.ms = ms
        self.send = array("d")
        self.lat = array("d")
        self.lag = array("d")
        self.end = array("d")
        self.status = array("h")
        self.flags = array("B")

    def add(self, sched: float, sent: float, end: float, status: int, flags: int) -> None:
        self.send.append(sched - self.ms)
        self.lat.append(end - sched)
        self.lag.append(sent - sched)
        self.end.append(end)
        self.status.append(status)
        self.flags.append(flags)

    def take(self, before: float | None = None) -> Payload:
        """Remove and return the records that completed before ``before`` (all if None)."""
        n = len(self.end) if before is None else bisect_left(self.end, before)
        cols = (self.send, self.lat, self.lag, self.status, self.flags)
        out = tuple(c[:n].tobytes() for c in cols)
        for c in (*cols, self.end):
            del c[:n]
        return out  # type: ignore[return-value]


def make_session(target: Target, limit: int, timeout: float) -> aiohttp.ClientSession:
    """A keep-alive session holding up to ``limit`` connections."""
    connector = aiohttp.TCPConnector(limit=max(1, limit), limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers=dict(target.headers),
    )


def session_limit(plan: LevelPlan, wid: int, workers: int) -> int:
    if plan.mode == "closed":
        return share(int(plan.value), workers, wid)
    return share(plan.max_inflight, workers, wid)


class _WorkerLevel:
    """One worker's part of one load level."""

    def __init__(
        self,
        wid: int,
        workers: int,
        plan: LevelPlan,
        target: Target,
        t0: float,
        session: aiohttp.ClientSession,
        emit: Callable[[tuple], Any],
        stop_windows: Callable[[], int],
    ) -> None:
        self.wid = wid
        self.workers = workers
        self.plan = plan
        self.target = target
        self.t0 = t0
        self.ms = t0 + plan.warmup
        self.session = session
        self.emit = emit
        self.stop_windows = stop_windows
        self.rec = _Recorder(self.ms)
        self.quota = None if plan.windowed else share(plan.requests or 0, workers, wid)
        self.stop_at = self.ms + plan.windows * plan.window if plan.windowed else float("inf")
        self.sent = 0
        self._counter = itertools.count()
        self._inflight: set[asyncio.Task] = set()
        self._senders_done = asyncio.Event()
        self._method = target.method
        self._url = target.url
        self._protocol = target.protocol

    def _refresh_stop(self) -> int:
        k = min(self.stop_windows(), self.plan.windows)
        if self.plan.windowed:
            self.stop_at = self.ms + k * self.plan.window
        return k

    def _take_ticket(self, t: float) -> bool:
        """False once a --requests quota is used up; warm-up requests take no ticket."""
        if self.quota is None or t < self.ms:
            return True
        if self.quota <= 0:
            return False
        self.quota -= 1
        return True

    async def run(self) -> None:
        # Every worker starts at the shared t0, however early its "go" arrived.
        # (the loop's timer may fire a hair early against monotonic(); a request sent then
        # would count as warm-up and exceed a --requests quota)
        while (left := self.t0 - monotonic()) > 0:
            await asyncio.sleep(left)
        ticker = asyncio.create_task(self._ticker())
        try:
            if self.plan.mode == "closed":
                users = share(int(self.plan.value), self.workers, self.wid)
                await asyncio.gather(*(self._user() for _ in range(users)))
            else:
                await self._schedule()
                while self._inflight:
                    await asyncio.wait(set(self._inflight))
            self._senders_done.set()
            await ticker
        finally:
            if not ticker.done():
                ticker.cancel()
        self.emit(("final", self.wid, cpu_seconds(), self.rec.take(), self.sent))

    async def _ticker(self) -> None:
        window = self.plan.window
        b = 0
        while True:
            boundary = self.ms + b * window
            while True:
                self._refresh_stop()
                now = monotonic()
                if now >= boundary:
                    break
                if not self.plan.windowed and self._senders_done.is_set():
                    return
                await asyncio.sleep(min(_POLL_S, boundary - now))
            payload = self.rec.take(before=boundary)
            self.emit(("batch", self.wid, b, cpu_seconds(), EMPTY_PAYLOAD if b == 0 else payload))
            if self.plan.windowed and b >= self._refresh_stop():
                return
            b += 1

    async def _send(self, i: int) -> tuple[int, int]:
        try:
            async with self.session.request(self._method, self._url, data=self.target.body(i)) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:  # before ClientConnectionError: ServerTimeoutError is both
            return TIMEOUT, 0
        except aiohttp.ClientConnectionError:
            return CONNECTION_ERROR, 0
        except aiohttp.ClientError:
            return CLIENT_ERROR, 0
        if 200 <= status < 300:
            return status, answer_flags(body, self._protocol)
        return status, 0

    def _next_i(self) -> int:
        return self.wid + self.workers * next(self._counter)

    async def _user(self) -> None:
        while True:
            t = monotonic()
            if t >= self.stop_at or not self._take_ticket(t):
                return
            self.sent += 1
            status, flags = await self._send(self._next_i())
            self.rec.add(t, t, monotonic(), status, flags)

    async def _schedule(self) -> None:
        plan = self.plan
        sem = asyncio.Semaphore(max(1, share(plan.max_inflight, self.workers, self.wid)))
        burst = 0
        for offset in arrivals(plan.arrivals, plan.value, plan.seed, worker=self.wid, workers=self.workers):
            sched = self.t0 + offset
            # A long gap (low rate): sleep in slices so that a stop is noticed.
            while sched - monotonic() > _POLL_S and sched < self.stop_at:
                await asyncio.sleep(_POLL_S)
            if sched >= self.stop_at or not self._take_ticket(sched):
                return
            delay = sched - monotonic()
            if delay > 0:
                burst = 0
                await asyncio.sleep(delay)
            else:
                # Behind schedule: launch back to back, yielding now and then so the
                # sending tasks run. Their latency still counts from ``sched``.
                burst += 1
                if burst >= _BURST:
                    burst = 0
                    await asyncio.sleep(0)
            self.sent += 1
            task = asyncio.create_task(self._one(sched, sem, self._next_i()))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, sched: float, sem: asyncio.Semaphore, i: int) -> None:
        async with sem:
            sent = monotonic()
            status, flags = await self._send(i)
            end = monotonic()
        self.rec.add(sched, sent, end, status, flags)


async def run_worker_level(
    wid: int,
    workers: int,
    plan: LevelPlan,
    target: Target,
    t0: float,
    session: aiohttp.ClientSession,
    emit: Callable[[tuple], Any],
    stop_windows: Callable[[], int],
) -> None:
    """Run worker ``wid``'s share of ``plan`` from ``t0``, reporting through ``emit``.

    ``stop_windows()`` is polled for the number of windows after which to stop;
    the parent lowers it when the level turned stable.
    """
    await _WorkerLevel(wid, workers, plan, target, t0, session, emit, stop_windows).run()


class _Box:
    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value


class InProcessPool:
    """One generator on the caller's event loop (``--workers 0``): for tests and debugging.

    Its CPU figure is that of the whole calling process.
    """

    workers = 1

    def __init__(self, target: Target) -> None:
        self.target = target
        self._queue: asyncio.Queue[tuple] = asyncio.Queue()
        self._stop = _Box()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        pass

    async def begin(self, plan: LevelPlan) -> float:
        self._queue = asyncio.Queue()
        self._stop.value = plan.windows
        t0 = monotonic() + 0.01
        self._task = asyncio.create_task(self._run(plan, t0))
        return t0

    async def _run(self, plan: LevelPlan, t0: float) -> None:
        try:
            async with make_session(self.target, session_limit(plan, 0, 1), plan.timeout) as session:
                await run_worker_level(0, 1, plan, self.target, t0, session, self._queue.put_nowait, self._read_stop)
        except Exception:  # noqa: BLE001 - any failure is the level's result, reported whole
            self._queue.put_nowait(("error", 0, traceback.format_exc()))

    def _read_stop(self) -> int:
        return self._stop.value

    async def recv(self) -> tuple:
        return await self._queue.get()

    def stop_after(self, windows: int) -> None:
        self._stop.value = windows

    async def close(self) -> None:
        await cancel_and_wait(self._task)


class ProcessPool:
    """``workers`` generator processes, kept for a whole sweep."""

    def __init__(self, target: Target, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a process pool needs at least one worker, got {workers}")
        self.workers = workers
        self.target = target
        ctx = mp.get_context("spawn")  # fork under a running loop and its threads is unsafe
        self._results = ctx.Queue()
        self._stop = ctx.RawValue("i", 0)
        self._commands = [ctx.Queue() for _ in range(workers)]
        self._procs = [
            ctx.Process(
                target=_process_main,
                args=(w, workers, target, self._commands[w], self._results, self._stop),
                name=f"clipper-bench-worker-{w}",
                daemon=True,
            )
            for w in range(workers)
        ]
        self._started = False

    async def start(self) -> None:
        for p in self._procs:
            p.start()
        self._started = True

    async def begin(self, plan: LevelPlan) -> float:
        self._stop.value = plan.windows
        for q in self._commands:
            q.put(("level", plan))
        ready: set[int] = set()
        deadline = monotonic() + 120.0
        while len(ready) < self.workers:
            msg = await self._get(deadline)
            if msg[0] == "ready":
                ready.add(msg[1])
            elif msg[0] == "error":
                raise WorkerError(f"load generator worker {msg[1]} failed:\n{msg[2]}")
        # A little slack so every worker is waiting before t0 arrives.
        t0 = monotonic() + 0.05
        for q in self._commands:
            q.put(("go", t0))
        return t0

    async def recv(self) -> tuple:
        return await self._get(None)

    async def _get(self, deadline: float | None) -> tuple:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await loop.run_in_executor(None, self._results.get, True, 0.25)
            except queue.Empty:
                pass
            for p in self._procs:
                if not p.is_alive():
                    raise WorkerError(f"load generator worker {p.name} exited with code {p.exitcode}")
            if deadline is not None and monotonic() > deadline:
                raise WorkerError("load generator workers were not ready within 120 s")

    def stop_after(self, windows: int) -> None:
        self._stop.value = windows

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._started:
            # Ends a level still running (an interrupted sweep) at the next poll.
            self._stop.value = 0
            for q, p in zip(self._commands, self._procs):
                if p.is_alive():
                    q.put(("quit",))
            for p in self._procs:
                await loop.run_in_executor(None, p.join, 3.0)
                if p.is_alive():
                    p.terminate()
                    await loop.run_in_executor(None, p.join, 5.0)
        for q in (*self._commands, self._results):
            q.close()
            q.join_thread()


def _process_main(wid: int, workers: int, target: Target, commands: Any, results: Any, stop: Any) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_process_serve(wid, workers, target, commands, results, stop))
    # After "quit" nobody reads our results any more (an interrupted level's final
    # message may still be buffered): do not wait to flush them into the pipe.
    results.cancel_join_thread()


async def _process_serve(wid: int, workers: int, target: Target, commands: Any, results: Any, stop: Any) -> None:
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, commands.get)
        if cmd[0] == "quit":
            return
        plan: LevelPlan = cmd[1]
        try:
            async with make_session(target, session_limit(plan, wid, workers), plan.timeout) as session:
                results.put(("ready", wid))
                go = await loop.run_in_executor(None, commands.get)
                if go[0] == "quit":
                    return
                await run_worker_level(wid, workers, plan, target, go[1], session, results.put, lambda: stop.value)
        except Exception:  # noqa: BLE001 - the parent prints it and stops the sweep
            results.put(("error", wid, traceback.format_exc()))
