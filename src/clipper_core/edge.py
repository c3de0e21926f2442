"""The HTTP edge: what a listener holds (connections, requests) and what it lets in.

One :class:`Edge` per listening port owns both, and is the one place that decides about a
request: admit it, answer it with its app's default output, or refuse it with ``503`` and
``Retry-After``.

Connections.  aiohttp has no cap on connections and no timeout before a request's headers are
complete, so 1,000 idle connections under a 1,024 open-file limit once stopped every query and
management call.  The edge serves aiohttp's protocol through one thin wrapper per connection
(:class:`EdgeConnection`):

* a connection that has not completed its first request's headers within
  ``idle_timeout_s`` is closed (slow or no headers), and one idle between requests for
  ``keepalive_timeout_s`` (idle keep-alive);
* at ``max_connections`` a new connection first evicts the longest-idle one; when every
  connection is busy in a request, the new one is closed at once.

Arrival.  A query's deadline starts when it arrives, not when its handler runs.  Under overload
the gap between the two is where the frontend's own queueing hides: requests sit in socket
buffers and in the event loop's ready queue while the handlers of earlier requests run.  Two
sources of the arrival time, the earliest wins:

* the time the event loop read the request's first bytes (the wrapper notes the frontend's
  clock, :mod:`clipper_core.clock`, in ``data_received``, once per request: a clock read
  and an attribute store);
* an ``X-Request-Start`` header set by a load balancer in front (nginx's ``t=<seconds>``,
  or a bare number of seconds, milliseconds or microseconds since the epoch).

Admission (:meth:`Edge.admit`).  At most ``max_in_flight`` requests are held at once (read,
parsed, queued or waiting for their answer).  A query route (``POST /{app}/predict``,
``POST /v2/models/{name}/infer``; marked with :func:`query_route`) is also refused when it
already spent more than ``wait_fraction`` of its SLO before its handler got to it (the rest
belongs to the batch; the scheduler's batch budget is the same share; for long SLOs the rest
kept is at most ``headroom_cap_s``).  A refused query never reaches the scheduler, its body is
never parsed, and it is counted as ``refused`` in ``/metrics``.  It is answered with the app's
default output (built without parsing the body) when the route can answer one without parsing (a
single ``/predict`` input), otherwise ``503`` with ``Retry-After`` (a batch, an app without a
default, an OIP request).  Every other route over the cap gets the ``503`` before its handler
runs.

Unread refusals.  Refusing through aiohttp still costs most of a prediction (about 64 µs of
the frontend's CPU against 111 µs, measured with wrk), so a frontend that is itself the
bottleneck cannot refuse fast enough to keep its queues short: they grow in the kernel, where
no deadline sees them.  The frontend's own queueing is measured apart from its clients (a slow
client or a balancer's queue says nothing about it): at most once a millisecond, a request's
first bytes schedule a probe on the event loop's ready queue, where the request's handler will
queue too, and the probe notes how long it waited.  The share of queries let in follows it,
AIMD-style (:attr:`Edge.admit_share`): each probe over ``lag_share`` of the tightest wait
budget among the queries served in the last second (2.5 ms for a 20 ms SLO) cuts it by a
tenth, and under it the share grows back by ``LAG_RECOVERY_PER_S`` a second.  A query not let
in that arrived whole in one read (one ``POST /{app}/predict`` with a single input, its body
complete, nothing pipelined behind it) is answered with its app's default output straight
from the connection, before aiohttp sees it: about 9 µs.  Anything else (a batch, an app
without a default, a body still coming) takes the aiohttp path.

Whole queries.  The same whole single-input queries, when let in, are answered without aiohttp
too: parsing a request into aiohttp's Request, its middlewares and its Response cost about
half the frontend's CPU per prediction.  The edge hands the request's app, body and arrival to
its ``direct`` hook (the query API's :class:`~clipper_core.frontend.DirectPredict`), which
either declines (the request then takes aiohttp's path unchanged) or answers later through
:meth:`EdgeConnection.respond`.  Answers on a connection stay in request order: bytes that
come while a direct query is in flight wait in the connection (reading pauses past
``PENDING_LIMIT``) until it is answered; a connection whose requests aiohttp may still be
serving (a request handed over that was not one whole request, or bytes that came while it
was being served: a pipelining client) never takes the direct path again.  The edge, not
aiohttp, closes idle keep-alive connections, since aiohttp does not see direct requests.
"""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable

import orjson
from aiohttp import web

from . import clock, log
from .errors import Overloaded
from .log import RateLimitedLog

#: share of a query's SLO it may spend before its handler runs; later it is refused ...
DEFAULT_WAIT_FRACTION = 0.5
#: ... except that what it keeps for the rest (the batch) need not exceed this: a 2 s SLO
#: may wait 1.9 s (the scheduler's admission control still sheds what cannot make it)
DEFAULT_HEADROOM_CAP_S = 0.1
#: an X-Request-Start older than this is taken as a broken clock and ignored
MAX_HEADER_AGE_S = 60.0
#: what a refused client is told to wait before trying again (seconds)
RETRY_AFTER = "1"
#: the event loop's own queueing (how long a probe waits on its ready queue) that the
#: frontend keeps to by refusing queries unread, as a share of the tightest wait budget of
#: the queries it served in the last second (2.5 ms for a 20 ms SLO; none for a 1 s SLO)
DEFAULT_LAG_SHARE = 0.25
#: each probe over the target lets in this share of what the previous one did ...
LAG_BACKOFF = 0.9
#: ... and under it, the share let in grows back by this much per second
LAG_RECOVERY_PER_S = 5.0
#: no probe came back for this long: the load stopped, and the share grows back
LAG_IDLE_S = 0.05
#: bytes of pipelined requests a connection holds while its direct query is in flight before
#: it stops reading
PENDING_LIMIT = 1 << 16
_JSON = "application/json"
_METHODS = frozenset((b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"))
#: what :func:`whole_request` reads: the request line (a method, a target, HTTP/1.0 or 1.1) ...
_REQUEST_LINE = re.compile(b"(" + b"|".join(sorted(_METHODS)) + rb") ([^ \r\n]+) "
                           rb"(HTTP/1\.[01])\r\n")
#: ... header lines, each a token, a colon and a value on one line ...
_HEADER_LINES = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*")
#: ... and the headers it acts on, wherever they are
_WATCHED = re.compile(rb"^(content-length|connection|x-request-start|transfer-encoding|expect"
                      rb"|upgrade):([^\r\n]*)\r$", re.IGNORECASE | re.MULTILINE)

#: the edge of the listener an app is served on (set by :meth:`Edge.install`)
EDGE = web.AppKey("edge", object)
#: where the edge leaves a request's arrival time (the frontend's clock, clipper_core.clock)
ARRIVED = web.RequestKey("clipper_arrived", float)


def query_route(handler: Callable) -> Callable:
    """Mark a route handler as a query route: it calls :meth:`Edge.admit` itself, with its
    app, before parsing the body (the edge's middleware leaves the decision to it)."""
    handler.clipper_query_route = True
    return handler


class EdgeConnection:
    """aiohttp's protocol for one connection, wrapped: notes when a request's first bytes
    were read (``arrived``) and whether a request is being handled (``active``), and since
    when the connection is idle.  Bytes that open a request line, read while no request is
    being handled, start a request; chunks of a body do not, and neither do pipelined
    requests (they count from their handler).

    ``aio`` says what aiohttp may still be serving: 0 nothing, 1 one whole request (until its
    handler returns), 2 anything (for good: the direct path is closed to this connection).
    ``direct``: a query answered through :meth:`respond` is in flight."""

    __slots__ = ("proto", "edge", "transport", "active", "idle_since", "served", "arrived",
                 "aio", "direct", "pending", "paused")

    def __init__(self, proto: Any, edge: "Edge") -> None:
        self.proto = proto
        self.edge = edge
        self.transport = None
        self.active = 0
        self.served = False
        self.idle_since = edge.clock()
        self.arrived: float | None = None
        self.aio = 0
        self.direct = False
        self.pending: bytearray | None = None
        self.paused = False

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.edge.opened(self)
        self.proto.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.edge.closed(self)
        self.proto.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.direct:  # answers go in order: this waits for the one in flight
            if self.pending is None:
                self.pending = bytearray()
            self.pending += data
            if len(self.pending) > PENDING_LIMIT and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        # the rest of a body its handler did not wait for can still come after it returned:
        # only bytes that open a request line (a method, then a space) start a request
        if self.arrived is None and not self.active and data[:8].split(b" ", 1)[0] in _METHODS:
            edge = self.edge
            now = edge.clock()
            edge.probe(now)
            if self.aio == 0:
                req = whole_request(data) if edge.app_lookup is not None else None
                if req is not None and req[0] is not None and edge.serve_whole(self, data, req,
                                                                               now):
                    return
                self.aio = 1 if req is not None else 2
            self.arrived = now
        elif self.aio == 1:
            self.aio = 2  # more bytes while aiohttp serves a request: it may hold several
        self.proto.data_received(data)

    def eof_received(self) -> Any:
        return self.proto.eof_received()

    def pause_writing(self) -> None:
        self.proto.pause_writing()

    def resume_writing(self) -> None:
        self.proto.resume_writing()

    # the direct path
    def respond(self, status: int, body: bytes, close: bool, headers: dict | None = None
                ) -> None:
        """Answer the direct query in flight (or, before it started, the request just read)
        with ``status`` and the JSON ``body``; then serve what came meanwhile."""
        t = self.transport
        if not t.is_closing():
            t.write(response_head(status, len(body), close, headers) + body)
            if close:
                t.close()
        edge = self.edge
        if self.direct:
            self.direct = False
            self.active -= 1
            edge.in_flight -= 1
        self.served = True
        self.idle_since = edge.clock()
        pending = self.pending
        if pending and not close and not t.is_closing():
            self.pending = None
            if self.paused:
                self.paused = False
                t.resume_reading()
            self.data_received(bytes(pending))


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


def arrival(request: web.Request, now: float, stamp: float | None = None) -> float:
    """When ``request`` arrived, on the frontend's clock (``now`` is ``Edge.clock()``): the
    earliest of ``stamp`` (its first bytes' read time), its ``X-Request-Start`` header and
    ``now``."""
    return earliest_arrival(now, stamp, request.headers.get("X-Request-Start"))


def earliest_arrival(now: float, stamp: float | None, request_start: str | None) -> float:
    """The earliest of ``now``, ``stamp`` and the ``X-Request-Start`` value ``request_start``
    (ignored when it is not one, in the future, or older than ``MAX_HEADER_AGE_S``)."""
    t = now
    if stamp is not None and stamp < t:
        t = stamp
    if request_start is not None:
        epoch = parse_request_start(request_start)
        if epoch is not None:
            age = time.time() - epoch
            if 0.0 < age < MAX_HEADER_AGE_S and now - age < t:
                t = now - age
    return t


class Edge:
    """One listener's connections and requests, and its admission decisions.

    Serve it with :meth:`install` (before the app's runner is set up) and :meth:`start`
    (with the runner's protocol factory; returns the factory ``create_server`` takes).
    ``on_refused(app name)`` counts a refused query."""

    def __init__(self, *, name: str = "edge", max_connections: int = 10_000,
                 max_in_flight: int = 8192, idle_timeout_s: float = 15.0,
                 keepalive_timeout_s: float = 75.0,
                 wait_fraction: float = DEFAULT_WAIT_FRACTION,
                 headroom_cap_s: float = DEFAULT_HEADROOM_CAP_S,
                 on_refused: Callable[[str], None] | None = None,
                 app_lookup: Callable[[str], Any] | None = None,
                 new_query_id: Callable[[], int] | None = None,
                 lag_share: float = DEFAULT_LAG_SHARE,
                 direct: Callable[..., bool] | None = None) -> None:
        if not 0.0 < wait_fraction <= 1.0:
            raise ValueError("wait_fraction must be in (0, 1]")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not headroom_cap_s >= 0.0:
            raise ValueError("headroom_cap_s must be >= 0")
        self.name = name
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.idle_timeout_s = idle_timeout_s
        self.keepalive_timeout_s = max(keepalive_timeout_s, idle_timeout_s)
        self.wait_fraction = wait_fraction
        self.headroom_cap_s = headroom_cap_s
        self.on_refused = on_refused
        #: unread refusals need the apps (name -> AppConfig or None) and query ids; without
        #: them (the management port) every request takes aiohttp's path
        self.app_lookup = app_lookup
        self.new_query_id = new_query_id
        #: ``direct(conn, app, body, arrived, close) -> bool``: takes a whole query admitted
        #: unread, to answer through ``conn.respond`` (False: aiohttp serves it)
        self.direct = direct
        self.lag_share = lag_share
        #: the tightest wait budget of the queries admitted lately, and since when
        self._tightest = float("inf")
        self._tightest_at = -1.0
        #: the share of the whole single-input queries let through to aiohttp (AIMD on the
        #: probes' lag: 1.0 unless the frontend is overloaded); the latest probe's lag
        self.admit_share = 1.0
        self.last_lag = 0.0
        #: id(app) -> (app, the body of its refusal after the query id), until a probe
        self._refusals: dict[int, tuple[Any, bytes]] = {}
        self._share_at = 0.0
        self._credit = 0.0
        self._probe_at = -1.0
        self._probing = False
        self.factory: Callable[[], Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        #: the time now, s: the frontend's clock (tests drive the probes on their own)
        self.clock: Callable[[], float] = clock.now
        self._conns: dict[Any, EdgeConnection] = {}  # transport -> connection
        #: requests held now, the one being decided included
        self.in_flight = 0
        self.refused_connections = 0
        self.evicted = 0
        #: requests refused (503 or the default output)
        self.refused = 0
        self._log = RateLimitedLog(log.server)
        self._sweeper: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle
    def install(self, app: web.Application) -> None:
        """Serve ``app`` through this edge: its middleware goes just inside the error
        mapping (the first middleware), so that a refusal is answered in the app's shape."""
        app[EDGE] = self
        app.middlewares.insert(1, self.middleware)

    def start(self, factory: Callable[[], Any]) -> "Edge":
        """Start serving connections made by ``factory`` (aiohttp's protocol factory, a
        runner's ``server``); returns the protocol factory for ``create_server``."""
        self.factory = factory
        self.loop = asyncio.get_running_loop()
        self._sweeper = self.loop.create_task(self._sweep())
        return self

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # ------------------------------------------------------------ connections
    def __call__(self) -> EdgeConnection:
        return EdgeConnection(self.factory(), self)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def opened(self, c: EdgeConnection) -> None:
        if len(self._conns) >= self.max_connections and not self._evict_one():
            self.refused_connections += 1
            self._log.warning("%s: %d connections, all busy: a new one is refused (limit "
                              "--max-connections)", self.name, len(self._conns))
            c.transport.abort()
            return
        self._conns[c.transport] = c

    def closed(self, c: EdgeConnection) -> None:
        self._conns.pop(c.transport, None)

    def _evict_one(self) -> bool:
        oldest = None
        for c in self._conns.values():
            if not c.active and (oldest is None or c.idle_since < oldest.idle_since):
                oldest = c
        if oldest is None:
            return False
        self.evicted += 1
        self._log.warning("%s: at %d connections: closing the longest-idle one", self.name,
                          len(self._conns))
        self._conns.pop(oldest.transport, None)
        oldest.transport.abort()
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s / 4))
            now = self.clock()
            fresh, kept = now - self.idle_timeout_s, now - self.keepalive_timeout_s
            stale = [c for c in self._conns.values() if not c.active
                     and c.idle_since < (kept if c.served else fresh)]
            for c in stale:
                self._conns.pop(c.transport, None)
                c.transport.abort()

    # ------------------------------------------------------------ requests
    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Holds every request's place: its arrival (``request[ARRIVED]``), its connection
        marked busy, the count of requests held; refuses a request of any route but a query
        route over the cap before its handler runs."""
        c = self._conns.get(request.transport)
        stamp = None
        if c is not None:
            stamp = c.arrived
            c.arrived = None  # the next request on this connection stamps afresh
            c.active += 1
        request[ARRIVED] = arrival(request, self.clock(), stamp)
        self.in_flight += 1
        try:
            if not getattr(request.match_info.handler, "clipper_query_route", False):
                self.admit(request)
            return await handler(request)
        finally:
            self.in_flight -= 1
            if c is not None:
                c.active -= 1
                if c.aio == 1:
                    c.aio = 0  # (its answer is written before the loop reads again)
                c.served = True
                c.idle_since = self.clock()

    def verdict(self, slo_s: float | None, arrived: float, now: float) -> str | None:
        """Why a request is refused at ``now``, None when it may go on: over the cap, or (for
        a query of SLO ``slo_s``) it arrived at ``arrived`` and waited too long."""
        if slo_s is not None:
            waited = now - arrived
            if waited > self.wait_budget(slo_s):
                return (f"refused: the query waited {waited * 1e3:.1f} ms for the frontend; "
                        f"its {slo_s * 1e3:g} ms SLO leaves too little for the model")
        if self.in_flight > self.max_in_flight:
            return (f"refused: the frontend holds {self.in_flight} requests, over its limit "
                    f"of {self.max_in_flight}")
        return None

    def admit(self, request: web.Request, app: Any = None, body: bytes | None = None,
              new_query_id: Callable[[], int] | None = None) -> web.Response | None:
        """Decide about ``request``: None admits it.  For a query of ``app`` (an AppConfig)
        the decision also weighs its wait against the app's SLO; with ``body`` (the raw
        bytes, searched for ``"input_batch"``, never parsed) and ``new_query_id`` a single
        query is answered with the app's default output (the Response returned).  Every other
        refusal raises :class:`~clipper_core.errors.Overloaded` (503 with ``Retry-After``,
        in the shape of the app's error mapping)."""
        arrived = request.get(ARRIVED)
        if app is None or arrived is None:
            why = self.verdict(None, 0.0, 0.0)
        else:
            now = self.clock()
            slo_s = app.slo_micros / 1e6
            self.note_slo(slo_s, now)
            why = self.verdict(slo_s, arrived, now)
        if why is None:
            return None
        self.refused += 1
        if app is None:
            self._log.warning("%s: %d requests in flight: answering 503 (limit "
                              "--max-in-flight)", self.name, self.in_flight)
            raise Overloaded(f"the server holds {self.in_flight} requests already; try again",
                             retry_after=RETRY_AFTER)
        if self.on_refused is not None:
            self.on_refused(app.name)
        if (app.default_output is None or body is None or new_query_id is None
                or b'"input_batch"' in body):
            raise Overloaded(why, retry_after=RETRY_AFTER)
        return self._default_answer(app, why, new_query_id())

    def wait_budget(self, slo_s: float) -> float:
        """How long a query of SLO ``slo_s`` may wait for the frontend before its handler
        runs (the rest is the model's)."""
        headroom = (1.0 - self.wait_fraction) * slo_s
        if headroom > self.headroom_cap_s:
            headroom = self.headroom_cap_s
        return slo_s - headroom

    # ------------------------------------------------------------ unread refusals
    def note_slo(self, slo_s: float, now: float) -> None:
        """A query of SLO ``slo_s`` came at ``now``: the lag target follows the tightest
        wait budget of the last second's queries."""
        budget = self.wait_budget(slo_s)
        if budget <= self._tightest or now - self._tightest_at > 1.0:
            self._tightest = budget
            self._tightest_at = now

    @property
    def lag_target_s(self) -> float:
        """The event loop lag that unread refusals keep to (inf before any query)."""
        return self.lag_share * self._tightest

    def probe(self, now: float) -> None:
        """A request's first bytes were read at ``now``: measure the event loop's queueing
        (at most one probe at a time, once a millisecond)."""
        if self._probing or now - self._probe_at < 0.001 or self.app_lookup is None:
            return
        self._probing = True
        self._probe_at = now
        # the share grows back with the time since the last probe that found no lag, or
        # since the last one at all when that is long ago (the load stopped)
        if self.last_lag <= self.lag_target_s or now - self._share_at > LAG_IDLE_S:
            self._recover(now)
        self.loop.call_soon(self._probed, now)

    def _probed(self, sent: float) -> None:
        self._probing = False
        self._refusals.clear()  # they tell the lag and the share: both change now
        now = self.clock()
        self.last_lag = now - sent
        if self.last_lag > self.lag_target_s:
            self.admit_share *= LAG_BACKOFF
            self._share_at = now
        else:
            self._recover(now)

    def _recover(self, now: float) -> None:
        if self.admit_share < 1.0:
            self._refusals.clear()
            share = self.admit_share + LAG_RECOVERY_PER_S * (now - self._share_at)
            self.admit_share = share if share < 1.0 else 1.0
        self._share_at = now

    def serve_whole(self, conn: EdgeConnection, data: bytes, req: tuple, now: float) -> bool:
        """The request in ``data`` is one whole ``POST /{app}/predict`` (``req``, from
        :func:`whole_request`) read at ``now`` on a connection aiohttp serves nothing on:
        refuse it unread (:meth:`refuse_unread`), or hand it to the ``direct`` hook.  False
        leaves it to aiohttp."""
        name, close, body_at, request_start = req
        if conn.transport.get_write_buffer_size():
            return False  # a client not reading its answers: aiohttp's flow control holds it
        app = self.app_lookup(name)
        if app is None:
            return False
        body = data[body_at:]
        if self.admit_share < 1.0 and self.refuse_unread(conn, app, body, close, now):
            return True
        if self.direct is None:
            return False
        arrived = (now if request_start is None
                   else earliest_arrival(now, None, request_start.decode("latin-1")))
        slo_s = app.slo_micros / 1e6
        self.note_slo(slo_s, now)
        self.in_flight += 1
        conn.active += 1
        conn.direct = True
        try:
            # refused (aiohttp's path refuses it the same way) or declined: aiohttp's path
            taken = self.verdict(slo_s, arrived, now) is None and self.direct(
                conn, app, body, arrived, close)
        except Exception as e:  # a fault of the direct path must not cost the query
            self._log.warning("%s: the direct path failed on a query of app %s (%s: %s); it "
                              "takes aiohttp's path", self.name, app.name, type(e).__name__, e)
            taken = False
        if not taken and conn.direct:
            conn.direct = False
            conn.active -= 1
            self.in_flight -= 1
        return taken

    def refuse_unread(self, conn: EdgeConnection, app: Any, body: bytes, close: bool,
                      now: float) -> bool:
        """Answer a whole single-input query of ``app`` with its default output straight
        from ``conn``, if the app has one and the query is not among the ``admit_share`` let
        through."""
        if app.default_output is None or b'"input_batch"' in body:
            return False
        self._credit += self.admit_share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return False
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused(app.name)
        # the answer but its query id, kept until the next probe changes what it says
        kept = self._refusals.get(id(app))
        if kept is None or kept[0] is not app:
            why = (f"refused unread: the frontend is overloaded (its event loop lags "
                   f"{self.last_lag * 1e3:.1f} ms; {100 * self.admit_share:.0f} % of "
                   f"queries let in)")
            kept = self._refusals[id(app)] = (app, _default_tail(app, why))
        conn.respond(200, b'{"query_id":%d,%s' % (self.new_query_id(), kept[1]), close)
        return True

    @staticmethod
    def _default_answer(app: Any, why: str, query_id: int) -> web.Response:
        return web.Response(body=_default_body(app, why, query_id), content_type=_JSON)


def _default_body(app: Any, why: str, query_id: int) -> bytes:
    """The JSON of ``app``'s default output as the answer to query ``query_id``."""
    return b'{"query_id":%d,%s' % (query_id, _default_tail(app, why))


def _default_tail(app: Any, why: str) -> bytes:
    """:func:`_default_body` after its query id (and the comma after it)."""
    return orjson.dumps({"output": app.default_output, "default": True, "confidence": 0.0,
                         "models": [], "default_explanation": why})[1:]


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_date = [0, b""]


#: heads without extra headers made this second, by (status, length, close)
_heads: dict[tuple[int, int, bool], bytes] = {}


def response_head(status: int, length: int, close: bool, headers: dict | None = None) -> bytes:
    """The head of an HTTP/1.1 answer with a JSON body of ``length`` bytes."""
    now = int(time.time())
    if _date[0] != now:  # once a second, as aiohttp does
        _date[0] = now
        _date[1] = formatdate(now, usegmt=True).encode()
        _heads.clear()
    if headers is None:
        key = (status, length, close)
        head = _heads.get(key)
        if head is None:
            head = _head(status, length, close, b"")
            if len(_heads) < 1024:
                _heads[key] = head
        return head
    return _head(status, length, close, b"".join(
        b"%s: %s\r\n" % (k.encode("latin-1"), str(v).encode("latin-1"))
        for k, v in headers.items()))


def _head(status: int, length: int, close: bool, extra: bytes) -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Date: %s\r\n%s%s\r\n" % (status, _REASONS.get(status, b"Unknown"), length,
                                        _date[1], extra,
                                        b"Connection: close\r\n" if close else b""))


def whole_request(data: bytes) -> tuple[str | None, bool, int, bytes | None] | None:
    """``(app, close, body_at, request_start)`` when ``data`` is exactly one whole HTTP/1.x
    request (any body complete by its Content-Length, no Transfer-Encoding or Expect,
    nothing after it); ``app``: the app's name when it is a ``POST /{app}/predict``, else
    None; ``close``: the client asked for the connection to close; ``body_at``: where the
    body starts; ``request_start``: its ``X-Request-Start`` value, if any.  None for
    anything else (a request still coming, several, or not HTTP/1.x).

    Strict, as aiohttp's parser is, so that the edge never frames a request differently:
    every header name is a token (no whitespace before the colon, no folded line), and no
    line holds a bare CR or LF.  Regular expressions do the reading (in C): it runs on every
    query, and a Python loop over the header lines cost 3.7 us of the 16 us a refusal costs
    the frontend in all."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    first = _REQUEST_LINE.match(data, 0, end + 2)
    if first is None or _HEADER_LINES.fullmatch(data, first.end(), end + 2) is None:
        return None
    method, target, version = first.groups()
    length = -1
    close = version == b"HTTP/1.0"
    start = None
    for name, value in _WATCHED.findall(data, first.end(), end + 2):
        name = name.lower()
        if name == b"content-length":
            value = value.strip(b" \t")
            if length >= 0 or not value.isdigit():  # (int() would take "+1", "1_0")
                return None
            length = int(value)
        elif name == b"connection":
            v = value.strip().lower()
            close = v == b"close" or (close and v != b"keep-alive")
        elif name == b"x-request-start":
            start = value.strip()
        else:  # transfer-encoding, expect, upgrade
            return None
    if len(data) != end + 4 + (length if length > 0 else 0):
        return None
    app = None
    if method == b"POST" and length >= 0:
        name = predict_target(target)
        if name is not None:
            try:
                app = name.decode("ascii")
            except UnicodeDecodeError:
                return None
    return app, close, end + 4, start


def predict_target(target: bytes) -> bytes | None:
    """The app's name in a ``/{app}/predict`` request target (a query string and the
    original Clipper's trailing slash allowed); None for any other target."""
    path = target.split(b"?", 1)[0].split(b"/")
    if path[-1] == b"":
        path.pop()
    if len(path) == 3 and path[0] == b"" and path[2] == b"predict" and path[1]:
        return path[1]
    return None
