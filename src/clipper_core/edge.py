"""The query port's edge: when a query arrived, and refusing what cannot be answered in time.

A query's deadline starts when it arrives, not when its handler runs.  Under overload the
gap between the two is where the frontend's own queueing hides: requests sit in socket
buffers and in the event loop's ready queue while the handlers of earlier requests run.
Two sources of the arrival time, the earliest wins:

* the time the event loop read the request's first bytes: :class:`EdgeRunner` serves the
  app through a thin protocol wrapper that notes ``loop.time()`` in ``data_received`` (once
  per request, a clock read and an attribute store);
* an ``X-Request-Start`` header set by a load balancer in front (nginx's ``t=<seconds>``,
  or a bare number of seconds, milliseconds or microseconds since the epoch).

:class:`Gate` then refuses, before the body is parsed, what the frontend cannot answer in
time: a query that already spent more than ``wait_fraction`` of its SLO before its handler
got to it (the rest belongs to the batch; the scheduler's batch budget is the same share; for
long SLOs the rest kept is at most ``headroom_cap_s``), and any query beyond
``max_in_flight`` requests held.  A refusal answers with the app's
default output (a pre-serialised body) for a single input, or ``503`` with ``Retry-After``
when the app has no default or the request is a batch; it never reaches the scheduler and
is counted as ``refused`` in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, Callable

import orjson
from aiohttp import web

#: share of a query's SLO it may spend before its handler runs; later it is refused ...
DEFAULT_WAIT_FRACTION = 0.5
#: ... except that what it keeps for the rest (the batch) need not exceed this: a 2 s SLO
#: may wait 1.9 s (the scheduler's admission control still sheds what cannot make it)
DEFAULT_HEADROOM_CAP_S = 0.1
#: requests the query port holds at most (parsed, queued or waiting for their answer)
DEFAULT_MAX_IN_FLIGHT = 4096
#: an X-Request-Start older than this is taken as a broken clock and ignored
MAX_HEADER_AGE_S = 60.0
_JSON = "application/json"


class _Stamped(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection and notes when a request's first bytes
    were read (``arrived``): bytes that open a request line, read while no request is being
    handled on the connection (``busy``, kept by :func:`arrival_middleware`), start a request;
    chunks of a body do not, and neither do pipelined requests (they count from their
    handler)."""

    __slots__ = ("inner", "loop", "arrived", "busy")

    def __init__(self, factory: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.inner = factory()
        self.loop = loop
        self.arrived: float | None = None
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.inner.connection_made(transport)
        _BY_HANDLER[self.inner] = self

    def connection_lost(self, exc: BaseException | None) -> None:
        _BY_HANDLER.pop(self.inner, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # the rest of a body its handler did not wait for can still come after it returned:
        # only bytes that open a request line (a method, then a space) start a request
        if self.arrived is None and not self.busy and data[:8].split(b" ", 1)[0] in _METHODS:
            self.arrived = self.loop.time()
        self.inner.data_received(data)

    def eof_received(self) -> Any:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


_METHODS = frozenset((b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"))

#: aiohttp's protocol of a connection -> its wrapper (entries leave with the connection)
_BY_HANDLER: dict = {}


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose sites stamp each request's arrival (see :func:`arrival`)."""

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        return partial(_Stamped, inner, asyncio.get_running_loop())


def parse_request_start(value: str) -> float | None:
    """Seconds since the epoch from an ``X-Request-Start`` value, or None when it is not one:
    ``t=1700000000.123`` (nginx), or a bare number in seconds, milliseconds or microseconds
    (told apart by magnitude)."""
    v = value.strip()
    if v.startswith("t="):
        v = v[2:]
    try:
        t = float(v)
    except ValueError:
        return None
    if not t > 0 or t != t or t == float("inf"):
        return None
    if t > 1e14:
        return t / 1e6
    if t > 1e11:
        return t / 1e3
    return t


#: where :func:`arrival_middleware` leaves a request's arrival time (the loop's clock)
ARRIVED = "clipper_arrived"


@web.middleware
async def arrival_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Notes every request's arrival (:func:`arrival`) in ``request[ARRIVED]`` before its
    handler runs, and keeps its connection marked busy until the handler is done."""
    w = _BY_HANDLER.get(request.protocol)
    stamp = None
    if w is not None:
        stamp = w.arrived
        w.arrived = None  # the next request on this connection stamps afresh
        w.busy = True
    request[ARRIVED] = arrival(request, asyncio.get_running_loop().time(), stamp)
    try:
        return await handler(request)
    finally:
        if w is not None:
            w.busy = False


def arrival(request: web.Request, now: float, stamp: float | None = None) -> float:
    """When ``request`` arrived, on the loop's clock (``now`` is ``loop.time()``): the
    earliest of ``stamp`` (its first bytes' read time), its ``X-Request-Start`` header and
    ``now``."""
    t = now
    if stamp is not None and stamp < t:
        t = stamp
    h = request.headers.get("X-Request-Start")
    if h is not None:
        epoch = parse_request_start(h)
        if epoch is not None:
            age = time.time() - epoch
            if 0.0 < age < MAX_HEADER_AGE_S and now - age < t:
                t = now - age
    return t


class Gate:
    """Admission at the edge: bounds the requests held and refuses, before parsing, the
    queries whose wait before their handler ate ``wait_fraction`` of their SLO."""

    def __init__(self, wait_fraction: float = DEFAULT_WAIT_FRACTION,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 headroom_cap_s: float = DEFAULT_HEADROOM_CAP_S) -> None:
        if not 0.0 < wait_fraction <= 1.0:
            raise ValueError("wait_fraction must be in (0, 1]")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not headroom_cap_s >= 0.0:
            raise ValueError("headroom_cap_s must be >= 0")
        self.wait_fraction = wait_fraction
        self.headroom_cap_s = headroom_cap_s
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        #: (app name, default output JSON) -> the pre-serialised parts of a refusal body
        self._bodies: dict = {}

    def verdict(self, slo_s: float, arrived: float, now: float) -> str | None:
        """Why a query of SLO ``slo_s`` that arrived at ``arrived`` is refused at ``now``;
        None when it may go on."""
        waited = now - arrived
        headroom = (1.0 - self.wait_fraction) * slo_s
        if headroom > self.headroom_cap_s:
            headroom = self.headroom_cap_s
        if waited > slo_s - headroom:
            return (f"refused: the query waited {waited * 1e3:.1f} ms for the frontend; its "
                    f"{slo_s * 1e3:g} ms SLO leaves too little for the model")
        if self.in_flight >= self.max_in_flight:
            return (f"refused: the frontend holds {self.in_flight} requests, its limit")
        return None

    def refusal(self, app: Any, body: bytes, why: str, query_id: int) -> web.Response:
        """The answer to a refused request: the app's default output for one input, else
        503 with ``Retry-After`` (a batch, or an app without a default).  ``body`` is only
        searched for the ``input_batch`` key, never parsed."""
        if app.default_output is None or b'"input_batch"' in body:
            return web.Response(
                body=orjson.dumps({"error": "overloaded", "cause": why}), status=503,
                content_type=_JSON, headers={"Retry-After": "1"})
        key = (app.name, app.default_output)
        parts = self._bodies.get(key)
        if parts is None:
            if len(self._bodies) > 1024:
                self._bodies.clear()
            tail = orjson.dumps({"output": app.default_output, "default": True,
                                 "confidence": 0.0, "models": []})
            parts = self._bodies[key] = (b'{"query_id":', b"," + tail[1:-1] +
                                         b',"default_explanation":')
        text = b"".join((parts[0], str(query_id).encode(), parts[1], orjson.dumps(why), b"}"))
        return web.Response(body=text, content_type=_JSON)
