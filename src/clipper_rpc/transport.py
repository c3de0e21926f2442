"""ZeroMQ transports: they move frames and know nothing of their meaning.

* :class:`RouterTransport` is the frontend side: a plain ROUTER socket driven from the asyncio
  loop with ``add_reader`` on ``ZMQ_FD``.  Readiness is edge-triggered, so every wake-up, and
  every send that finds a message waiting, is followed by a drain until ``ZMQ_EVENTS`` shows
  none (pyzmq #199, #1075); one awaited future per message would cap throughput at a third of
  what the socket does.
* :class:`DealerChannel` is the container side: a blocking DEALER with a receive timeout
  (``ZMQ_RCVTIMEO``), so that heartbeats go out and signals are handled while idle.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, Sequence

import zmq
from zmq.backend import Socket as _Compiled

if TYPE_CHECKING:
    from .auth import Credentials, ServerAuth

log = logging.getLogger("clipper.rpc")

# The frames of a message go through pyzmq's compiled socket methods directly: its Python
# layer (``send_multipart``/``recv_multipart``) costs about 8 us per message of 4 small frames
# on this machine (enum arithmetic on the flags, a type check and a method call per frame), as
# much as the rest of a batch's encoding.  The frontend reads readiness from ZMQ_EVENTS (a
# poll() system call in libzmq), not from a ``zmq.Again`` raised by a receive on an empty
# socket (the same poll() plus a Python exception): at one client this measured cheaper than
# one drain per loop iteration after sends, which ends in a zmq.Again every time (at 16
# clients the two were within the noise).
_send = _Compiled.send
_recv = _Compiled.recv
_get = _Compiled.get
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_RCVTIMEO = int(zmq.RCVTIMEO)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: what :class:`RouterTransport` hands each message to: the peer's identity and the frames
FrameHandler = Callable[[bytes, list], None]
#: frames at least this large are sent without a copy; smaller ones are copied, which is
#: cheaper than tracking a zero-copy frame (pyzmq's own threshold)
COPY_THRESHOLD = zmq.COPY_THRESHOLD


def _copy(frame) -> bool:
    return (len(frame) if type(frame) is bytes else memoryview(frame).nbytes) < COPY_THRESHOLD


def send_frames(sock: zmq.Socket, frames: Sequence, flags: int = 0,
                identity: bytes | None = None) -> None:
    """``sock.send_multipart(([identity] if identity else []) + frames, flags)``, below
    pyzmq's Python layer.  A multipart message is queued whole or not at all: only its first
    frame can fail (unroutable identity, high-water mark)."""
    more = flags | _SNDMORE
    if identity is not None:
        _send(sock, identity, more, True)
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _send(sock, f, more if i < last else flags, _copy(f))


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """``sock.recv_multipart(flags)``, below pyzmq's Python layer: frames smaller than
    ``COPY_THRESHOLD`` as ``bytes``, larger ones as zero-copy buffers.  (Each frame is taken
    as a ``zmq.Frame``, whose ``more`` is an attribute: asking the socket for ZMQ_RCVMORE
    costs a microsecond per frame.)"""
    parts = []
    more = True
    while more:
        f = _recv(sock, flags, False)
        more = f.more
        parts.append(f.bytes if len(f) < COPY_THRESHOLD else f.buffer)
    return parts


def readable(sock: zmq.Socket) -> bool:
    """Whether a message can be read now (also re-arms the edge-triggered ``ZMQ_FD``)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


class RouterTransport:
    """Frontend end of the RPC: bind a ROUTER, hand each message to ``on_message``."""

    def __init__(self, address: str, on_message: FrameHandler,
                 ctx: zmq.Context | None = None, *, max_drain: int = 4096,
                 auth: "ServerAuth | None" = None, max_message_bytes: int = -1,
                 rcv_hwm: int = 1000, local_address: str | None = None) -> None:
        self._ctx = ctx or zmq.Context.instance()
        #: a second endpoint on the same socket, for replicas on this machine: an ``ipc://``
        #: path (a Unix socket: cheaper per message than loopback TCP), bound after
        #: ``address``; ``local_endpoint`` is "" when there is none or it cannot be bound
        self._local_address = local_address
        self.local_endpoint = ""
        self._auth = auth
        self._max_message_bytes = max_message_bytes
        self._rcv_hwm = rcv_hwm
        self._address = address
        self._on_message = on_message
        self._max_drain = max_drain
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._drain_pending = False
        self._draining = False
        self.endpoint = ""
        self.sent = 0
        self.received = 0
        self.send_failures = 0

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> str:
        """Bind and start reading; returns the bound endpoint (port 0 picks a free port)."""
        self._loop = loop or asyncio.get_running_loop()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # report an unroutable identity instead of dropping the message silently
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        # what one peer may have queued towards us (messages); ZeroMQ stops reading its TCP
        # stream beyond that, so a flooding peer holds its own bytes, not ours
        sock.setsockopt(zmq.RCVHWM, self._rcv_hwm)
        # a larger frame disconnects the peer before its body is buffered (a 300 MB frame
        # would otherwise be read into memory before any check could refuse it)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        if self._auth is not None:
            self._auth.apply(sock)
        addr = self._address
        if addr.startswith("tcp://") and addr.endswith(":0"):
            addr = addr[:-2] + ":*"
        sock.bind(addr)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._local_address:
            try:
                sock.bind(self._local_address)
                self.local_endpoint = self._local_address
            except zmq.ZMQError as e:  # the replicas on this machine use ``endpoint``
                log.warning("cannot bind the local RPC endpoint %s (%s); replicas on this "
                            "machine connect to %s", self._local_address, e, self.endpoint)
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self._schedule_drain()
        return self.endpoint

    def send(self, identity: bytes, frames: Sequence) -> bool:
        """Send ``frames`` to ``identity`` without blocking; False if the peer is gone or full."""
        sock = self._sock
        if sock is None:
            return False
        try:
            send_frames(sock, frames, _NOBLOCK, identity)
            ok = True
            self.sent += 1
        except zmq.ZMQError as e:  # EHOSTUNREACH (unknown peer) or EAGAIN (peer's HWM full)
            log.debug("send to %r failed: %s", identity, e)
            self.send_failures += 1
            ok = False
        # libzmq may have consumed the readiness edge inside send(): if a message is waiting,
        # read it soon (a drain in progress reads it anyway)
        if not self._draining and readable(sock):
            self._schedule_drain()
        return ok

    def _schedule_drain(self) -> None:
        if not self._drain_pending and self._loop is not None:
            self._drain_pending = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_pending = False
        sock = self._sock
        if sock is None:
            return
        handled = 0
        self._draining = True
        try:
            while handled < self._max_drain:
                try:
                    if not readable(sock):
                        return
                    frames = recv_frames(sock, _NOBLOCK)
                except zmq.ZMQError as e:
                    log.error("RPC socket receive failed: %s", e)
                    return
                handled += 1
                self.received += 1
                if len(frames) < 2:
                    continue
                try:
                    self._on_message(frames[0], frames[1:])
                except Exception:  # a handler bug must not stop the RPC loop
                    log.exception("RPC message handler failed")
                if self._sock is None:  # closed by a handler
                    return
        finally:
            self._draining = False
        # fairness: yield to the loop, then continue draining
        self._schedule_drain()

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except Exception:  # loop already closed
                pass
        self._sock.close(linger=0)
        self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class DealerChannel:
    """Container end of the RPC: a blocking DEALER connected to the frontend's ROUTER."""

    def __init__(self, address: str, ctx: zmq.Context | None = None, *,
                 credentials: "Credentials | None" = None) -> None:
        self._ctx = ctx or zmq.Context.instance()
        self.address = address
        self._sock = self._ctx.socket(zmq.DEALER)
        if credentials is not None:
            credentials.apply(self._sock)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # queue nothing while the frontend is away: a backlog of stale heartbeats would fill
        # the high-water mark after ~1000 s and then block every send (and SIGTERM with it),
        # and would flood a restarted frontend; the container re-registers instead
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.connect(address)
        self._timeout_ms = -1  # ZMQ_RCVTIMEO as set

    def send(self, frames: Sequence) -> None:
        # large arrays are sent without copy; small frames are cheap to copy either way
        send_frames(self._sock, frames)

    def try_send(self, frames: Sequence) -> bool:
        """Send without blocking; False (nothing sent) while no frontend is connected."""
        try:
            send_frames(self._sock, frames, _NOBLOCK)
            return True
        except zmq.Again:
            return False

    def recv(self, timeout_s: float) -> list | None:
        """One message's frames (small ones as bytes, large ones as zero-copy buffers), or
        None after ``timeout_s``."""
        # under load the next batch is usually queued already (the frontend sends it while
        # this one computes): take it without a poll system call first
        # a blocking receive with ZMQ_RCVTIMEO: one poll() in libzmq while waiting, none when
        # a message is queued (a zmq.Poller round costs three system calls)
        ms = max(0, int(timeout_s * 1000))
        if ms != self._timeout_ms:
            self._sock.setsockopt(_RCVTIMEO, ms)
            self._timeout_ms = ms
        try:
            return recv_frames(self._sock)
        except zmq.Again:
            return None

    def recv_nowait(self) -> list | None:
        """One message's frames if one is queued, else None (no system call to wait)."""
        try:
            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        return [f.buffer for f in frames]

    def close(self) -> None:
        self._sock.close(linger=0)

    @staticmethod
    def wait_any(channels: "Sequence[DealerChannel]", timeout_s: float) -> list:
        """The channels of ``channels`` that have a message, waiting up to ``timeout_s``."""
        poller = zmq.Poller()
        for c in channels:
            poller.register(c._sock, zmq.POLLIN)
        ready = dict(poller.poll(max(0, int(timeout_s * 1000))))
        return [c for c in channels if c._sock in ready]
