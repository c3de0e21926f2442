"""Connection limits for the HTTP listeners: what keeps idle or slow clients from taking the
file descriptors that queries and management need.

aiohttp has no cap on connections and no timeout before a request's headers are complete, so
1,000 idle connections under a 1,024 open-file limit stopped every query and management
call.  :class:`ConnectionGate` wraps a listener's protocol factory:

* a connection that has not completed its first request's headers within
  ``idle_timeout_s`` is closed (slow or no headers), and one idle between requests for
  ``keepalive_timeout_s`` (idle keep-alive);
* at ``max_connections`` a new connection first evicts the longest-idle one; when every
  connection is busy in a request, the new one is closed at once;
* ``max_in_flight`` requests at a time; more are answered 503 without being read.

Each listener has its own gate, so a flood on the query port leaves the management port its
own connections.  :func:`raise_open_file_limit` lifts the soft limit to the hard one at start.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, Callable

from aiohttp import web

from . import log
from .errors import Overloaded
from .log import RateLimitedLog

GATE = web.AppKey("connection_gate", object)


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class _Conn:
    """Delegates to aiohttp's protocol; records when it last stopped being busy."""

    __slots__ = ("proto", "gate", "transport", "active", "idle_since", "served")

    def __init__(self, proto: Any, gate: "ConnectionGate") -> None:
        self.proto = proto
        self.gate = gate
        self.transport = None
        self.active = 0
        self.served = False
        self.idle_since = gate.loop.time()

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gate.opened(self)
        self.proto.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.gate.closed(self)
        self.proto.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.proto.data_received(data)

    def eof_received(self) -> Any:
        return self.proto.eof_received()

    def pause_writing(self) -> None:
        self.proto.pause_writing()

    def resume_writing(self) -> None:
        self.proto.resume_writing()


class ConnectionGate:
    def __init__(self, factory: Callable[[], Any] | None, *, max_connections: int,
                 max_in_flight: int, idle_timeout_s: float, keepalive_timeout_s: float,
                 name: str) -> None:
        self.factory = factory
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.idle_timeout_s = idle_timeout_s
        self.keepalive_timeout_s = max(keepalive_timeout_s, idle_timeout_s)
        self.name = name
        self.loop = asyncio.get_running_loop()
        self._conns: dict[Any, _Conn] = {}  # transport -> connection
        self.in_flight = 0
        self.refused_connections = 0
        self.evicted = 0
        self.refused_requests = 0
        self._log = RateLimitedLog(log.server)
        self._sweeper = self.loop.create_task(self._sweep())

    def __call__(self) -> _Conn:
        return _Conn(self.factory(), self)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def opened(self, c: _Conn) -> None:
        if len(self._conns) >= self.max_connections and not self._evict_one():
            self.refused_connections += 1
            self._log.warning("%s: %d connections, all busy: a new one is refused (limit "
                              "--max-connections)", self.name, len(self._conns))
            c.transport.abort()
            return
        self._conns[c.transport] = c

    def closed(self, c: _Conn) -> None:
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
            now = self.loop.time()
            fresh, kept = now - self.idle_timeout_s, now - self.keepalive_timeout_s
            stale = [c for c in self._conns.values() if not c.active
                     and c.idle_since < (kept if c.served else fresh)]
            for c in stale:
                self._conns.pop(c.transport, None)
                c.transport.abort()

    def close(self) -> None:
        self._sweeper.cancel()

    # the middleware's half: requests in flight per connection
    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if self.in_flight >= self.max_in_flight:
            self.refused_requests += 1
            self._log.warning("%s: %d requests in flight: answering 503 (limit "
                              "--max-in-flight)", self.name, self.in_flight)
            raise Overloaded(f"the server holds {self.in_flight} requests already; try again")
        c = self._conns.get(request.transport)
        self.in_flight += 1
        if c is not None:
            c.active += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            if c is not None:
                c.active -= 1
                c.served = True
                c.idle_since = self.loop.time()
