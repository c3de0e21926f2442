"""Baselines the overhead scenario measures in the same run as Clipper.

* ``http``: a bare aiohttp server on uvloop (what Clipper's frontend is built on) that parses
  the JSON body and answers a fixed Clipper-shaped JSON: the floor of one HTTP round trip
  with the same client, without any model.
* ``zmq``: the model function behind a bare ZeroMQ DEALER -> ROUTER echo (the same hop as
  Clipper's RPC, without its protocol, scheduler or frontend): the floor of one hop to a
  model process, model compute included.
* in-process: the model function called directly, which is its compute time.

Run as ``python benchmarks/_baselines.py http PORT_FILE`` or
``python benchmarks/_baselines.py zmq ADDRESS CLOSURE_FILE``; the runner starts and stops them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

STOP = b"stop"
READY = b"ready"

# nginx for the benchmarks that put it in front of Clipper or beside it (frontends.py: a
# load balancer; overload.py: a constant answer), run in the foreground from a scratch dir
_NGINX = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  {http}
  server {{
    listen 127.0.0.1:{port};
    location / {{ {location} }}
  }}
}}
"""


def need(binary: str) -> str:
    """The path of ``binary`` (nginx and wrk live in /usr/sbin, /usr/bin); exits saying how
    to get it when it is missing."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if path is None:
        sys.exit(f"{binary} is not installed: `make bench-deps` installs it")
    return path


def nginx_conf(scratch: str, port: int, location: str, *, workers: int = 1,
               http: str = "") -> str:
    """An nginx.conf serving ``location /`` with the directives ``location`` on
    127.0.0.1:``port`` (``http``: more directives in its ``http`` block, an upstream)."""
    return _NGINX.format(workers=workers, dir=scratch, port=port, location=location, http=http)


# -- the processes -------------------------------------------------------------------------


def _serve_http(port_file: str) -> None:
    import asyncio

    import orjson
    import uvloop
    from aiohttp import web

    answer = orjson.dumps({"query_id": 1, "output": 0, "default": False})

    async def predict(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=answer, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{app}/predict", predict)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, port_file)
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    uvloop.run(main())


def _serve_zmq(address: str, closure_file: str) -> None:
    import cloudpickle
    import msgpack
    import zmq

    with open(closure_file, "rb") as f:
        fn = cloudpickle.load(f)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(READY)
    try:
        while True:
            # a poll timeout so that a lost runner cannot leave this process blocked for good
            if not sock.poll(60_000):
                return
            frame = sock.recv(copy=True)
            if frame == STOP:
                return
            out = fn([np.frombuffer(frame, dtype=np.float64)])
            sock.send(msgpack.packb(list(out)))
    finally:
        sock.close()
        ctx.term()


# -- the runner's side ---------------------------------------------------------------------


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited with code {proc.returncode} during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {what} did not start within {timeout_s:g} s")
        time.sleep(0.02)


class HttpFloor:
    """The bare aiohttp server in a child process; ``url`` takes Clipper-shaped requests."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="clipper-bench-http-")
        self.port_file = os.path.join(self._dir.name, "port")
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "HttpFloor":
        self.proc = subprocess.Popen([sys.executable, __file__, "http", self.port_file],
                                     stdin=subprocess.DEVNULL)
        _wait_for(lambda: os.path.exists(self.port_file), self.proc, "HTTP baseline server")
        with open(self.port_file) as f:
            self.url = f"http://127.0.0.1:{int(f.read())}/floor/predict"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()


class ZmqFloor:
    """The model behind a bare DEALER -> ROUTER echo: this process is the ROUTER."""

    def __init__(self, closure: bytes) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="clipper-bench-zmq-")
        self.closure_file = os.path.join(self._dir.name, "closure.pkl")
        with open(self.closure_file, "wb") as f:
            f.write(closure)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ZmqFloor":
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "zmq", f"tcp://127.0.0.1:{port}", self.closure_file],
            stdin=subprocess.DEVNULL)
        # the peer's first message tells the ROUTER its identity
        _wait_for(lambda: bool(self.sock.poll(20)), self.proc, "ZeroMQ baseline peer")
        self.peer = self.sock.recv_multipart()[0]
        return self

    def measure(self, x: np.ndarray, duration_s: float, warmup_s: float) -> np.ndarray:
        """Round-trip latencies (seconds) of one request at a time for ``duration_s``."""
        import zmq

        sock, peer, payload = self.sock, self.peer, x.tobytes()
        lat: list[float] = []
        now = time.perf_counter
        start = now()
        measure_from = start + warmup_s
        end = measure_from + duration_s
        while True:
            t0 = now()
            if t0 >= end:
                break
            sock.send_multipart([peer, payload])
            if not sock.poll(30_000):
                raise RuntimeError("the ZeroMQ baseline peer did not answer within 30 s")
            sock.recv_multipart(zmq.NOBLOCK)
            if t0 >= measure_from:
                lat.append(now() - t0)
        return np.asarray(lat)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.sock.send_multipart([self.peer, STOP])
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - fall back to a signal
                self.proc.kill()
                self.proc.wait()
        self.sock.close()
        self.ctx.term()
        self._dir.cleanup()


def in_process(fn: Callable[[list], object], x: np.ndarray, duration_s: float,
               max_calls: int = 200_000) -> np.ndarray:
    """Latencies (seconds) of calling ``fn([x])`` directly: the model's compute time."""
    now = time.perf_counter
    lat: list[float] = []
    for _ in range(min(100, max_calls)):  # warm caches and lazy imports
        fn([x])
    end = now() + duration_s
    while len(lat) < max_calls:
        t0 = now()
        if t0 >= end:
            break
        fn([x])
        lat.append(now() - t0)
    return np.asarray(lat)


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"] and len(sys.argv) == 3:
        _serve_http(sys.argv[2])
    elif sys.argv[1:2] == ["zmq"] and len(sys.argv) == 4:
        _serve_zmq(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} http PORT_FILE | zmq ADDRESS CLOSURE_FILE")
