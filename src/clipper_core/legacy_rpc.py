"""The legacy RPC endpoint: model containers of the original Clipper (protocol v3).

``clipper start --legacy-rpc-port PORT`` binds a second ROUTER, on loopback unless the operator
names another host.  It is off by default and never authenticated: the original containers
cannot prove who they are (see ``docs/protocol.md``, "Protocol v3").

The scheduler speaks one protocol.  This endpoint makes each v3 container look like a native
replica to it: a registration when the container's metadata names a known model, heartbeats
when it answers, results when it predicts.  What the scheduler sends to a v3 replica (through
the send function :meth:`LegacyRpcServer.route` wraps) is translated at this edge:

* a batch becomes a v3 predict request; an empty batch (the warm-up probe) is answered here,
  because an original container dies on one;
* a heartbeat becomes a request for the container's metadata, the one message an idle v3
  container answers, so that it never goes quiet and a dead one is noticed;
* a reset asks for the metadata too (the container registers again); a shutdown is dropped
  (the original containers have none: whoever started them stops them).

v3 outputs are strings; like the original frontend, Clipper answers the JSON value of an
output that is JSON text (``"96.85"`` -> ``96.85``) and the text itself otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Callable

import orjson

from clipper_rpc import legacy_protocol as L
from clipper_rpc import protocol as P
from clipper_rpc.errors import ProtocolError
from clipper_rpc.transport import RouterTransport

from . import log
from .config import is_loopback
from .tasks import cancel_and_wait

#: scheduler identities of v3 replicas: a zero byte first (zmq reserves those for its own
#: 5-byte identities, and no peer may choose one), so they never collide with native ones
_PREFIX = b"\x00v3:"
#: peers that never registered are forgotten after this long without a word
PENDING_TTL_S = 60.0
MAX_PEERS = 4096
#: v3 requests one container may owe before the oldest is forgotten
MAX_PENDING = 4096

Send = Callable[[bytes, list], bool]


def json_or_text(s: str) -> Any:
    """The JSON value of ``s`` when it is JSON text, else ``s`` (the original's rule)."""
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return s


class _Peer:
    __slots__ = ("zid", "sid", "meta", "instance_id", "registered", "pending", "last_seen",
                 "refusal")

    def __init__(self, zid: bytes, now: float) -> None:
        self.zid = zid
        self.sid = _PREFIX + zid
        self.meta: L.ContainerMetadata | None = None
        self.instance_id = "v3-" + zid.hex()
        self.registered = False
        #: v3 message id -> scheduler batch id
        self.pending: dict[int, int] = {}
        self.last_seen = now
        self.refusal = ""


class LegacyRpcServer:
    """Binds the v3 ROUTER and stands between the original containers and the scheduler."""

    def __init__(self, address: str, *, retry_interval_s: float = 1.0) -> None:
        self.transport = RouterTransport(address, self._on_message)
        self.retry_interval_s = retry_interval_s
        self.scheduler: Any = None
        self._peers: dict[bytes, _Peer] = {}
        self._by_sid: dict[bytes, _Peer] = {}
        self._msg_ids = itertools.count(1)
        self._ask_metadata = L.encode(L.Heartbeat(L.HeartbeatType.REQUEST_CONTAINER_METADATA))
        self._keepalive = L.encode(L.Heartbeat(L.HeartbeatType.KEEPALIVE))
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.protocol_errors = 0
        self._last_protocol_log = 0.0

    @property
    def endpoint(self) -> str:
        return self.transport.endpoint

    # ---------------------------------------------------------------- lifecycle
    def route(self, native_send: Send) -> Send:
        """The scheduler's send function: v3 replicas' messages go through this endpoint,
        every other through ``native_send``."""

        def send(identity: bytes, frames: list) -> bool:
            if identity.startswith(_PREFIX):
                return self._send_translated(identity, frames)
            return native_send(identity, frames)

        return send

    def start(self, scheduler: Any) -> str:
        self.scheduler = scheduler
        self._loop = asyncio.get_running_loop()
        endpoint = self.transport.bind(self._loop)
        self._task = self._loop.create_task(self._housekeeping())
        log.rpc.info("legacy RPC (protocol v3, unauthenticated) listening on %s", endpoint)
        host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        if not is_loopback(host):
            log.rpc.warning("the legacy RPC port %s is reachable beyond this host: protocol v3 "
                            "cannot authenticate, so anyone who reaches it can answer for "
                            "any registered model (see docs/protocol.md)", endpoint)
        return endpoint

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self.transport.close()

    def peers(self) -> list[dict]:
        """The v3 containers this endpoint knows, registered or waiting for their model."""
        return [{"instance_id": p.instance_id, "registered": p.registered,
                 "model_name": p.meta.model_name if p.meta else None,
                 "model_version": p.meta.model_version if p.meta else None,
                 "input_type": p.meta.input_type if p.meta else None,
                 "waiting_because": p.refusal or None}
                for p in self._peers.values()]

    # ---------------------------------------------------------------- scheduler -> container
    def _send_translated(self, sid: bytes, frames: list) -> bool:
        peer = self._by_sid.get(sid)
        if peer is None:
            return False
        try:
            msg = P.decode([f if isinstance(f, (bytes, bytearray, memoryview))
                            else memoryview(f) for f in frames])
        except ProtocolError as e:  # pragma: no cover - the scheduler encodes what it sends
            log.rpc.error("cannot translate a message for v3 replica %s: %s",
                          peer.instance_id, e)
            return False
        if isinstance(msg, P.PredictBatch):
            if not msg.inputs:
                self._loop.call_soon(self._answer_empty, sid, msg.batch_id)
                return True
            msg_id = next(self._msg_ids) & 0xFFFFFFFF
            try:
                out = L.encode(L.PredictRequest(msg_id, msg.input_type, msg.inputs))
            except (ValueError, TypeError) as e:
                log.rpc.error("cannot encode a batch for v3 replica %s: %s",
                              peer.instance_id, e)
                return False
            if len(peer.pending) >= MAX_PENDING:  # answers it never gave: the scheduler
                del peer.pending[next(iter(peer.pending))]  # timed those batches out long ago
            peer.pending[msg_id] = msg.batch_id
            if not self.transport.send(peer.zid, out):
                peer.pending.pop(msg_id, None)
                return False
            return True
        if isinstance(msg, (P.Heartbeat, P.Reset)):
            return self.transport.send(peer.zid, self._ask_metadata)
        return True  # Shutdown, Registered: v3 has no such message

    def _answer_empty(self, sid: bytes, batch_id: int) -> None:
        self.scheduler.on_result(sid, P.Result(batch_id, []))

    # ---------------------------------------------------------------- container -> scheduler
    def _on_message(self, zid: bytes, frames: list) -> None:
        try:
            msg = L.decode_from_container(frames)
        except ProtocolError as e:
            self.protocol_errors += 1
            now = time.monotonic()
            if now - self._last_protocol_log > 1.0:
                self._last_protocol_log = now
                log.rpc.warning("dropped a malformed v3 message from peer %r: %s "
                                "(%d malformed so far)", zid, e, self.protocol_errors)
            return
        now = time.monotonic()
        peer = self._peers.get(zid)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                self._forget_stale(now, force=True)
                if len(self._peers) >= MAX_PEERS:
                    return
            peer = self._peers[zid] = _Peer(zid, now)
            self._by_sid[peer.sid] = peer
        peer.last_seen = now
        sched = self.scheduler
        if isinstance(msg, L.ContainerHeartbeat):
            if peer.registered and sched.touch(peer.sid):
                self.transport.send(zid, self._keepalive)
            else:
                peer.registered = False
                self.transport.send(zid, self._ask_metadata)
        elif isinstance(msg, L.ContainerMetadata):
            if peer.registered and peer.meta == msg and sched.touch(peer.sid):
                return  # the answer to our heartbeat
            peer.meta = msg
            self._register(peer)
        else:
            batch_id = peer.pending.pop(msg.msg_id, None)
            if batch_id is None or not peer.registered:
                log.rpc.warning("v3 replica %s answered message %d, which it does not owe",
                                peer.instance_id, msg.msg_id)
                return
            outputs = [json_or_text(o) for o in msg.outputs]
            sched.on_result(peer.sid, P.Result(batch_id, outputs))

    def _register(self, peer: _Peer) -> None:
        meta = peer.meta
        if meta is None:
            return
        if meta.rpc_version != L.RPC_VERSION:
            why = f"it speaks RPC version {meta.rpc_version}, not {L.RPC_VERSION}"
        else:
            key = (meta.model_name, meta.model_version)
            mq = self.scheduler.models.get(key)
            if mq is None:
                why = f"no model {meta.model_name}:{meta.model_version} is registered yet"
            elif mq.input_type != meta.input_type:
                why = (f"it takes {meta.input_type}, model {meta.model_name}:"
                       f"{meta.model_version} takes {mq.input_type}")
            else:
                why = ""
        if why:
            if why != peer.refusal:
                log.rpc.warning("v3 container %s (%s:%s) waits: %s", peer.instance_id,
                                meta.model_name, meta.model_version, why)
            peer.refusal = why
            peer.registered = False
            return
        reg = P.Register(meta.model_name, meta.model_version, meta.input_type,
                         peer.instance_id, 0, {"protocol": L.RPC_VERSION})
        # batches owed by an earlier registration of this socket are lost with it
        peer.pending.clear()
        peer.registered = self.scheduler.add_replica(peer.sid, reg) is not None
        peer.refusal = "" if peer.registered else "the scheduler refused it"

    # ---------------------------------------------------------------- housekeeping
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval_s)
            try:
                now = time.monotonic()
                for peer in list(self._peers.values()):
                    if peer.registered and self.scheduler.replica_by_instance(
                            peer.instance_id) is None:
                        # the scheduler dropped it (silent, or its model went): it registers
                        # again only when it speaks again
                        peer.registered = False
                        peer.meta = None
                    elif not peer.registered and peer.meta is not None:
                        self._register(peer)  # its model may exist by now
                self._forget_stale(now)
            except Exception:
                log.rpc.exception("legacy RPC housekeeping failed")

    def _forget_stale(self, now: float, force: bool = False) -> None:
        ttl = 0.0 if force else PENDING_TTL_S
        for zid, peer in list(self._peers.items()):
            if not peer.registered and now - peer.last_seen > ttl:
                del self._peers[zid]
                self._by_sid.pop(peer.sid, None)
