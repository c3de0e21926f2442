"""The model-wrapper library: what a container author calls.

>>> from clipper_rpc import serve
>>> def predict(inputs):            # a batch in, one output per input out
...     return [float(x.sum()) for x in inputs]
>>> serve(predict, model_name="sum", model_version="1", input_type="doubles")  # doctest: +SKIP

For models that load state once, subclass :class:`Model` and call :func:`serve_model`.
"""

from __future__ import annotations

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
    register = P.encode(P.Register(model_name, str(model_version), input_type, instance_id,
                                   os.getpid(), {"runtime": "python"}))
    chan = DealerChannel(address, credentials=creds)
    log.info("model %s:%s (%s) connecting to %s as %s", model_name, model_version,
             input_type, address, instance_id)
    try:
        _loop(chan, model, register, heartbeat_interval, stop)
    finally:
        chan.close()


def _loop(chan: DealerChannel, model: Model, register: list, hb: float,
          stop: threading.Event) -> None:
    # Sends never block: while no frontend is connected (not up yet, restarting) nothing is
    # queued, and REGISTER is retried until one is; a stop request is always seen promptly.
    heartbeat = P.encode(P.Heartbeat())
    must_register = True
    last_sent = last_heard = time.monotonic()
    while not stop.is_set():
        if must_register and chan.try_send(register):
            must_register = False
            last_sent = time.monotonic()
        frames = chan.recv(min(hb, 0.1))
        now = time.monotonic()
        if frames is not None:
            last_heard = now
            try:
                msg = P.decode(frames)
            except ProtocolError as e:
                log.error("dropped a malformed message from the frontend: %s", e)
                continue
            if isinstance(msg, P.PredictBatch):
                if not chan.try_send(_evaluate(model, msg)):
                    log.warning("the frontend went away; the answer to batch %d is dropped "
                                "(it re-sends the queries)", msg.batch_id)
                now = last_sent = time.monotonic()
            elif isinstance(msg, P.Registered):
                # answer at once: the frontend puts a replica in rotation only once it has
                # heard from it after registering
                chan.try_send(heartbeat)
                last_sent = now
            elif isinstance(msg, P.Reset):
                must_register = True
            elif isinstance(msg, P.Shutdown):
                log.info("frontend asked this container to shut down")
                return
            # a Heartbeat only refreshes last_heard
        if now - last_heard > 5 * hb:
            # the frontend went silent (restarted?): ZeroMQ reconnects by itself, so
            # announce ourselves again
            must_register = True
            last_heard = now
        elif not must_register and now - last_sent >= hb:
            chan.try_send(heartbeat)
            last_sent = now


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
