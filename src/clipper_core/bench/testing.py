"""A fake prediction server to try clipper-bench on, and to test it with.

It answers Clipper's ``POST /{app}/predict``, the OIP ``POST /v2/models/{name}/infer``,
a generic ``POST /echo`` and, when asked, ``GET /stats`` in Clipper's shape. Each
request sleeps ``delay`` seconds, at most ``concurrency`` at a time (queueing
beyond that); every ``error_every``-th request answers 500, every
``default_every``-th carries the default-output flag and every
``cache_every``-th the cache-hit flag.

The ``/stats`` counters are synthetic and exact, so a test can check the
breakdown arithmetic: per answered request, model ``"fake:1"`` adds one
observation of ``queue_delay_s`` = ``STATS_QUEUE_S``, ``batch_wait_s`` =
``STATS_BATCH_WAIT_S``, ``rpc_s`` = ``STATS_RPC_S``, ``model_compute_s`` =
``delay`` and ``batch_size`` = 1.

Run it alone with ``python -m clipper_core.bench.testing [--port P] [--delay S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from . import _json

__all__ = ["STATS_MODEL", "FakeOptions", "FakeServer", "ThreadedFakeServer", "make_app"]

STATS_MODEL = "fake:1"
STATS_QUEUE_S = 0.001
STATS_BATCH_WAIT_S = 0.0005
STATS_RPC_S = 0.0002


@dataclass
class FakeOptions:
    delay: float = 0.0
    concurrency: int | None = None
    error_every: int = 0
    default_every: int = 0
    cache_every: int = 0
    stats: bool = True


@dataclass
class _State:
    opts: FakeOptions
    count: int = 0
    sem: asyncio.Semaphore | None = None
    bodies: list[bytes] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def observe(self, name: str, value: float) -> None:
        m = self.metrics.setdefault(name, {"count": 0, "sum": 0.0})
        m["count"] += 1
        m["sum"] += value


_STATE = web.AppKey("clipper_bench_fake_state", _State)


async def _serve(request: web.Request) -> tuple[int, int]:
    """Common part of every predict route: count, queue, sleep. Returns (n, status)."""
    st = request.app[_STATE]
    st.count += 1
    n = st.count
    body = await request.read()
    if request.path == "/echo":
        st.bodies.append(body)
    if st.sem is not None:
        async with st.sem:
            await asyncio.sleep(st.opts.delay)
    elif st.opts.delay:
        await asyncio.sleep(st.opts.delay)
    o = st.opts
    if o.error_every and n % o.error_every == 0:
        return n, 500
    st.observe("queue_delay_s", STATS_QUEUE_S)
    st.observe("batch_wait_s", STATS_BATCH_WAIT_S)
    st.observe("rpc_s", STATS_RPC_S)
    st.observe("model_compute_s", o.delay)
    st.observe("batch_size", 1)
    return n, 200


def _flags(opts: FakeOptions, n: int) -> tuple[bool, bool]:
    default = bool(opts.default_every and n % opts.default_every == 0)
    cache = bool(opts.cache_every and n % opts.cache_every == 0)
    return default, cache


def _json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.dumps(doc), status=status, content_type="application/json")


async def _clipper(request: web.Request) -> web.Response:
    n, status = await _serve(request)
    if status != 200:
        return _json_response({"error": "injected failure"}, status)
    default, cache = _flags(request.app[_STATE].opts, n)
    return _json_response({"query_id": n, "output": 1.0, "default": default, "cache_hit": cache})


async def _oip(request: web.Request) -> web.Response:
    n, status = await _serve(request)
    if status != 200:
        return _json_response({"error": "injected failure"}, status)
    default, cache = _flags(request.app[_STATE].opts, n)
    return _json_response(
        {
            "model_name": request.match_info["name"],
            "id": str(n),
            "outputs": [{"name": "output", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}],
            "parameters": {"default": default, "cache_hit": cache},
        }
    )


async def _echo(request: web.Request) -> web.Response:
    _, status = await _serve(request)
    return web.Response(body=request.app[_STATE].bodies[-1] if status == 200 else b"{}", status=status)


async def _stats(request: web.Request) -> web.Response:
    st = request.app[_STATE]
    return _json_response({"models": {STATS_MODEL: st.metrics}})


def make_app(opts: FakeOptions | None = None) -> web.Application:
    opts = opts or FakeOptions()
    app = web.Application()
    st = _State(opts=opts)
    app[_STATE] = st

    async def on_startup(app: web.Application) -> None:
        # The semaphore belongs to the serving loop.
        st.sem = asyncio.Semaphore(opts.concurrency) if opts.concurrency else None

    app.on_startup.append(on_startup)
    app.router.add_post("/v2/models/{name}/infer", _oip)
    app.router.add_post("/echo", _echo)
    app.router.add_post("/{app}/predict", _clipper)
    if opts.stats:
        app.router.add_get("/stats", _stats)
    return app


class FakeServer:
    """The fake app on 127.0.0.1 and a free port, on the current event loop."""

    def __init__(self, opts: FakeOptions | None = None, port: int = 0) -> None:
        self.app = make_app(opts)
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> _State:
        return self.app[_STATE]

    def url(self, path: str = "/myapp/predict") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> FakeServer:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ThreadedFakeServer:
    """The fake server on its own loop in a thread, for callers that block (``main()``)."""

    def __init__(self, opts: FakeOptions | None = None) -> None:
        self.server = FakeServer(opts)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> _State:
        return self.server.state

    def url(self, path: str = "/myapp/predict") -> str:
        return self.server.url(path)

    def __enter__(self) -> Self:
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the starting thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-target", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the fake server did not start within 30 s")
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        fut = asyncio.run_coroutine_threadsafe(self.server.close(), self._loop)
        fut.result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def _main() -> None:  # pragma: no cover - manual use
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=1337)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--error-every", type=int, default=0)
    ap.add_argument("--default-every", type=int, default=0)
    ap.add_argument("--cache-every", type=int, default=0)
    ap.add_argument("--no-stats", action="store_true")
    ns = ap.parse_args()
    opts = FakeOptions(ns.delay, ns.concurrency, ns.error_every, ns.default_every, ns.cache_every, not ns.no_stats)

    async def serve() -> None:
        async with FakeServer(opts, ns.port) as srv:
            print(f"fake target on {srv.url()}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":  # pragma: no cover
    _main()
