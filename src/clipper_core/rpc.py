"""The frontend's RPC endpoint: decodes container messages and drives the scheduler."""

from __future__ import annotations

import asyncio
import time

from clipper_rpc import protocol as P
from clipper_rpc.errors import ProtocolError
from clipper_rpc.legacy_protocol import looks_like_v3
from clipper_rpc.transport import RouterTransport

from . import log
from .scheduler import Scheduler


V3_HINT = ("; it looks like an original Clipper container (RPC protocol v3): start Clipper "
           "with --legacy-rpc-port PORT and point its CLIPPER_PORT there")


class RpcServer:
    """Binds the ROUTER, answers registrations and heartbeats, routes results."""

    def __init__(self, address: str, scheduler_factory, *, heartbeat_interval_s: float = 1.0,
                 heartbeat_timeout_s: float = 5.0, route=None) -> None:
        self.transport = RouterTransport(address, self._on_message)
        #: what reaches a replica goes through here: ``route`` (the legacy endpoint's) sends
        #: the v3 replicas' messages through their own port
        self._send = self.transport.send if route is None else route(self.transport.send)
        self.scheduler: Scheduler = scheduler_factory(self._send)
        self.hb_interval = heartbeat_interval_s
        self.hb_timeout = heartbeat_timeout_s
        self._registered = P.encode(P.Registered(int(heartbeat_interval_s * 1000)))
        self._heartbeat = P.encode(P.Heartbeat())
        self._reset = P.encode(P.Reset())
        self._task: asyncio.Task | None = None
        self.protocol_errors = 0
        self._last_protocol_log = 0.0
        self.refused = 0

    @property
    def endpoint(self) -> str:
        return self.transport.endpoint

    def start(self) -> str:
        endpoint = self.transport.bind()
        self._task = asyncio.get_running_loop().create_task(self._heartbeats())
        log.rpc.info("RPC server listening on %s", endpoint)
        return endpoint

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        shutdown = P.encode(P.Shutdown())
        for r in self.scheduler.replicas():
            self._send(r.identity, shutdown)
        self.transport.close()

    def _on_message(self, identity: bytes, frames: list) -> None:
        try:
            msg = P.decode(frames)
        except ProtocolError as e:
            self.protocol_errors += 1
            now = time.monotonic()
            if now - self._last_protocol_log > 1.0:  # one bad peer must not flood the log
                self._last_protocol_log = now
                log.rpc.warning("dropped a malformed message from peer %r: %s "
                                "(%d malformed so far)%s", identity, e, self.protocol_errors,
                                V3_HINT if looks_like_v3(frames) else "")
            return
        sched = self.scheduler
        if isinstance(msg, P.Result):
            if not sched.on_result(identity, msg):
                self._unknown(identity)
        elif isinstance(msg, P.Heartbeat):
            if not sched.touch(identity):
                self._unknown(identity)
        elif isinstance(msg, P.Register):
            if sched.add_replica(identity, msg) is None:
                self.refused += 1
                log.rpc.warning("refused replica %s of unknown model %s:%s", msg.instance_id,
                                msg.model_name, msg.model_version)
            else:
                self.transport.send(identity, self._registered)
        elif isinstance(msg, P.Error):
            if not sched.on_error(identity, msg):
                self._unknown(identity)
        else:
            log.rpc.warning("peer %r sent %s, which only the frontend sends", identity,
                            type(msg).__name__)

    def _unknown(self, identity: bytes) -> None:
        if not self.scheduler.knows(identity):
            # a container we do not know (we restarted, or dropped it): ask it to register
            self.transport.send(identity, self._reset)

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.hb_interval)
            try:
                for r in self.scheduler.replicas():
                    self._send(r.identity, self._heartbeat)
                self.scheduler.sweep(loop.time(), self.hb_timeout)
            except Exception:
                log.rpc.exception("heartbeat round failed")
