"""The model-wrapper library: what a container author calls.

>>> from clipper_rpc import serve
>>> def predict(inputs):            # a batch in, one output per input out
...     return [float(x.sum()) for x in inputs]
>>> serve(predict, model_name="sum", model_version="1", input_type="doubles")  # doctest: +SKIP

For models that load state once, subclass :class:`Model` and call :func:`serve_model`.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Sequence

from . import protocol as P
from .auth import Credentials
from .errors import ProtocolError
from .transport import DealerChannel

log = logging.getLogger("clipper.container")

DEFAULT_ADDRESS = "tcp://127.0.0.1:7000"
ENV_ADDRESS = "CLIPPER_RPC_ADDRESS"
ENV_INSTANCE = "CLIPPER_INSTANCE_ID"


class Model:
    """Base class for a model that loads its state once, then predicts batches."""

    def load(self) -> None:
        """Called once in the container before the first registration."""

    def predict(self, inputs: list) -> Sequence[Any]:
        """Return one JSON-native output per input."""
        raise NotImplementedError


class _FunctionModel(Model):
    def __init__(self, fn: Callable[[list], Sequence[Any]]) -> None:
        self._fn = fn

    def predict(self, inputs: list) -> Sequence[Any]:
        return self._fn(inputs)


def serve(predict: Callable[[list], Sequence[Any]], *, model_name: str, model_version: str,
          input_type: str, address: str | None = None, **kw: Any) -> None:
    """Serve ``predict`` (a batch in, a list of outputs out) until stopped."""
    serve_model(_FunctionModel(predict), model_name=model_name, model_version=model_version,
                input_type=input_type, address=address, **kw)


def serve_model(model: Model, *, model_name: str, model_version: str, input_type: str,
                address: str | None = None, instance_id: str | None = None,
                heartbeat_interval: float = 1.0, stop: threading.Event | None = None,
                credentials: "Credentials | str | dict | None" = None) -> None:
    """Connect to the frontend at ``address`` and answer batches with ``model.predict``.

    ``credentials`` authenticate this replica to the frontend (CURVE): a
    :class:`~clipper_rpc.auth.Credentials`, the path of a credentials file (a frontend writes
    its own to ``<state dir>/rpc/credentials.json``) or that file's JSON as a dict.  Without
    them, the environment is read (``CLIPPER_RPC_SECRET_KEY`` and friends, which Clipper sets
    for the replicas it starts, or ``CLIPPER_RPC_CREDENTIALS``, a file path); with none at all
    the replica connects unauthenticated, which only a frontend started with ``--insecure-rpc``
    accepts.

    Returns when ``stop`` is set, the frontend sends SHUTDOWN, or SIGTERM/SIGINT arrives.
    """
    if input_type not in P.INPUT_TYPES:
        raise ValueError(f"input_type must be one of {P.INPUT_TYPES}, got {input_type!r}")
    address = address or os.environ.get(ENV_ADDRESS, DEFAULT_ADDRESS)
    instance_id = instance_id or os.environ.get(ENV_INSTANCE) or uuid.uuid4().hex
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    creds = Credentials.coerce(credentials)
    if creds is None:
        creds = Credentials.from_env()
    model.load()
    if threading.current_thread() is threading.main_thread():  # this process is the replica
        # the model and everything loaded with it live as long as the process: out of the
        # cyclic collector's sight, a full collection no longer walks them (tens of ms, a
        # batch's latency, for a large model)
        gc.collect()
        gc.freeze()
    register = P.encode(P.Register(model_name, str(model_version), input_type, instance_id,
                                   os.getpid(), {"runtime": "python"}))
    log.info("model %s:%s (%s) connecting to %s as %s", model_name, model_version,
             input_type, address, instance_id)
    links = _Links(address, creds)
    try:
        _loop(links, model, register, heartbeat_interval, stop)
    finally:
        links.close()


class _Link:
    """This replica's connection to one frontend: a DEALER and its registration state."""

    def __init__(self, address: str, credentials: Credentials | None) -> None:
        self.chan = DealerChannel(address, credentials=credentials)
        self.must_register = True
        self.last_sent = self.last_heard = time.monotonic()


class _Links:
    """One :class:`_Link` per frontend of the cluster: the address the replica was started
    with, and those the frontends list in REGISTERED (several frontends sharing a state
    store; see docs/protocol.md).  A frontend is disconnected once it is both missing from
    the latest list and silent (a list read while the cluster's store was unreachable may
    miss a live frontend, which goes on sending heartbeats); the first address is kept (its
    frontend may come back)."""

    def __init__(self, address: str, credentials: Credentials | None) -> None:
        self.first = address
        self._credentials = credentials
        self.listed: set[str] = set()
        self.by_address: dict[str, _Link] = {address: _Link(address, credentials)}

    def update(self, frontends: Sequence[str]) -> None:
        self.listed = set(frontends)
        for a in frontends:
            if a not in self.by_address:
                log.info("frontend %s joined the cluster: connecting", a)
                self.by_address[a] = _Link(a, self._credentials)

    def silent(self, link: _Link) -> None:
        """``link``'s frontend sent nothing for 5 heartbeat intervals."""
        a = link.chan.address
        if a != self.first and self.listed and a not in self.listed:
            log.info("frontend %s left the cluster: disconnecting", a)
            self.by_address.pop(a).chan.close()
        else:  # restarted?  ZeroMQ reconnects by itself, so announce ourselves again
            link.must_register = True
            link.last_heard = time.monotonic()

    def close(self) -> None:
        for link in self.by_address.values():
            link.chan.close()
        self.by_address.clear()


def _loop(links: _Links, model: Model, register: list, hb: float,
          stop: threading.Event) -> None:
    # Sends never block: while no frontend is connected (not up yet, restarting) nothing is
    # queued, and REGISTER is retried until one is; a stop request is always seen promptly.
    heartbeat = P.encode(P.Heartbeat())
    while not stop.is_set():
        current = list(links.by_address.values())
        for link in current:
            if link.must_register and link.chan.try_send(register):
                link.must_register = False
                link.last_sent = time.monotonic()
        if len(current) == 1:
            received = [(current[0], current[0].chan.recv(min(hb, 0.1)))]
        else:
            # under load a batch is usually queued already: take it without a poll first
            received = [(link, link.chan.recv_nowait()) for link in current]
            if all(frames is None for _, frames in received):
                ready = DealerChannel.wait_any([link.chan for link in current], min(hb, 0.1))
                received = [(link, link.chan.recv_nowait()) for link in current
                            if link.chan in ready]
        for link, frames in received:
            if frames is not None and _handle(link, links, frames, model, heartbeat):
                return
        now = time.monotonic()
        for link in current:
            if now - link.last_heard > 5 * hb:
                links.silent(link)
            elif not link.must_register and now - link.last_sent >= hb:
                link.chan.try_send(heartbeat)
                link.last_sent = now


def _handle(link: _Link, links: _Links, frames: list, model: Model, heartbeat: list) -> bool:
    """Act on one message from ``link``'s frontend; True when it asks us to shut down."""
    now = link.last_heard = time.monotonic()
    try:
        msg = P.decode(frames)
    except ProtocolError as e:
        log.error("dropped a malformed message from the frontend at %s: %s",
                  link.chan.address, e)
        return False
    if isinstance(msg, P.PredictBatch):
        if not link.chan.try_send(_evaluate(model, msg)):
            log.warning("the frontend at %s went away; the answer to batch %d is dropped "
                        "(it re-sends the queries)", link.chan.address, msg.batch_id)
        link.last_sent = time.monotonic()
    elif isinstance(msg, P.Registered):
        # answer at once: the frontend puts a replica in rotation only once it has heard
        # from it after registering
        link.chan.try_send(heartbeat)
        link.last_sent = now
        if msg.frontends:
            links.update(msg.frontends)
    elif isinstance(msg, P.Reset):
        link.must_register = True
    elif isinstance(msg, P.Shutdown):
        log.info("frontend at %s asked this container to shut down", link.chan.address)
        return True
    # a Heartbeat only refreshes last_heard
    return False


def _evaluate(model: Model, msg: P.PredictBatch) -> list:
    if not msg.inputs:
        # an empty batch is the frontend's warm-up probe: it proves this loop answers; the
        # model is not called (many models cannot take an empty batch)
        return P.encode_result(msg.batch_id, [], 0)
    try:
        t0 = time.perf_counter()
        outputs = model.predict(msg.inputs)
        compute_us = int((time.perf_counter() - t0) * 1e6)
        if outputs is None or isinstance(outputs, (str, bytes)):
            raise TypeError(
                f"predict must return a list of {len(msg.inputs)} outputs, "
                f"got {type(outputs).__name__}")
        outputs = list(outputs)
        if len(outputs) != len(msg.inputs):
            raise ValueError(f"predict returned {len(outputs)} outputs for a batch of "
                             f"{len(msg.inputs)} inputs")
        return P.encode_result(msg.batch_id, outputs, compute_us)
    except Exception as e:
        tb = traceback.format_exc()
        log.error("model raised on batch %d: %s", msg.batch_id, e)
        return P.encode(P.Error(msg.batch_id, type(e).__name__, str(e)[:4096], tb[-60000:]))
