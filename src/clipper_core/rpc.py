"""The frontend's RPC endpoint: decodes container messages and drives the scheduler."""

from __future__ import annotations

import asyncio
import json
import os

import zmq

from clipper_rpc import protocol as P
from clipper_rpc.auth import Credentials, ServerAuth, ServerKeys, new_keypair
from clipper_rpc.errors import ProtocolError
from clipper_rpc.legacy_protocol import looks_like_v3
from clipper_rpc.transport import RouterTransport

from . import clock, log
from .log import RateLimitedLog
from .errors import StateStoreError
from .scheduler import Scheduler
from .tasks import cancel_and_wait

#: under the state directory: the frontend's key pair, the replicas' credentials and the
#: extra client public keys an operator allows (one z85 key per line)
KEYS_DIR = "rpc"
SERVER_KEYS = "server.json"
CREDENTIALS = "credentials.json"
AUTHORIZED = "authorized_keys"


def rpc_keys(state_dir: str, cluster: dict | None = None) -> tuple[ServerKeys, Credentials]:
    """The frontend's CURVE keys and the credentials of the replicas it starts, created in
    ``<state_dir>/rpc/`` (mode 0700, files 0600) on first use and kept across restarts, so
    that replicas left running by a previous frontend can reconnect.

    ``cluster`` (several frontends sharing a state store; see :func:`new_cluster_keys`):
    the cluster's keys instead, the same on every frontend, so that one replica serves them
    all; its credentials are still written to ``<state_dir>/rpc/credentials.json`` for
    replicas started by hand."""
    d = os.path.join(state_dir, KEYS_DIR)
    try:
        _private_dir(d)
        creds_path = os.path.join(d, CREDENTIALS)
        if cluster is not None:
            sk = cluster["server"]
            creds = Credentials.from_json(cluster["replica"])
            if not os.path.exists(creds_path) or Credentials.load(creds_path) != creds:
                creds.save(creds_path)
        else:
            server_path = os.path.join(d, SERVER_KEYS)
            if not os.path.exists(server_path):
                public, secret = new_keypair()
                fd = os.open(server_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                             0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump({"public": public.decode(), "secret": secret.decode()}, f)
                os.replace(server_path + ".tmp", server_path)
            with open(server_path) as f:
                sk = json.load(f)
            if os.path.exists(creds_path):
                creds = Credentials.load(creds_path)
            else:
                creds = None
            if creds is None or creds.server_public != sk["public"].encode():
                public, secret = new_keypair()
                creds = Credentials(sk["public"], public, secret)
                creds.save(creds_path)
        clients = {creds.public}
        extra = os.path.join(d, AUTHORIZED)
        if os.path.exists(extra):
            with open(extra) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        clients.add(Credentials(creds.server_public, line, creds.secret).public)
        keys = ServerKeys(sk["public"].encode(), sk["secret"].encode(), frozenset(clients))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateStoreError(f"cannot read or create the RPC keys in {d}: {e}") from None
    return keys, creds


#: under the state directory's ``rpc/``: the Unix socket of the replicas on this machine
LOCAL_SOCKET = "replicas.ipc"
#: the longest path a Unix socket address holds (sun_path, less its terminating zero)
_SUN_PATH_MAX = 107


def local_rpc_address(state_dir: str) -> str | None:
    """The ``ipc://`` endpoint for the replicas this frontend starts as local processes:
    ``<state dir>/rpc/replicas.ipc``, in the directory that holds the RPC keys (mode 0700:
    nobody else can even reach the socket; CURVE still applies on it).  Its path stays the
    same across restarts, so replicas left running by a crashed frontend reconnect to the
    next one.  None when the path is too long for a Unix socket (the replicas then use the
    TCP endpoint) or the directory cannot be made."""
    d = os.path.join(os.path.abspath(state_dir), KEYS_DIR)
    path = os.path.join(d, LOCAL_SOCKET)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        return None
    try:
        _private_dir(d)
    except OSError:
        return None
    return "ipc://" + path


def _private_dir(d: str) -> None:
    """Make ``d`` (the RPC keys' directory) if needed, readable by its owner only."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)


def new_cluster_keys() -> str:
    """Fresh RPC keys for a cluster of frontends (JSON): one server key pair that every
    frontend's RPC socket uses, and the credentials of every replica."""
    public, secret = new_keypair()
    rpublic, rsecret = new_keypair()
    return json.dumps({"server": {"public": public.decode(), "secret": secret.decode()},
                       "replica": Credentials(public, rpublic, rsecret).to_json()})


V3_HINT = ("; it looks like an original Clipper container (RPC protocol v3): start Clipper "
           "with --legacy-rpc-port PORT and point its CLIPPER_PORT there")


class RpcServer:
    """Binds the ROUTER, answers registrations and heartbeats, routes results."""

    def __init__(self, address: str, scheduler_factory, *, heartbeat_interval_s: float = 1.0,
                 heartbeat_timeout_s: float = 5.0, keys: ServerKeys | None = None,
                 max_message_bytes: int = -1, route=None,
                 local_address: str | None = None) -> None:
        ctx = zmq.Context.instance()
        #: None: unauthenticated (``--insecure-rpc``, loopback only)
        self.auth = ServerAuth(keys, ctx) if keys is not None else None
        self.transport = RouterTransport(address, self._on_message, ctx, auth=self.auth,
                                         max_message_bytes=max_message_bytes,
                                         local_address=local_address)
        #: what reaches a replica goes through here: ``route`` (the legacy endpoint's) sends
        #: the v3 replicas' messages through their own port
        self._send = self.transport.send if route is None else route(self.transport.send)
        self.scheduler: Scheduler = scheduler_factory(self._send)
        self.hb_interval = heartbeat_interval_s
        self.hb_timeout = heartbeat_timeout_s
        self._registered = P.encode(P.Registered(int(heartbeat_interval_s * 1000)))
        #: the RPC addresses of every frontend of the cluster, told to each replica in
        #: REGISTERED (several frontends sharing a state store); empty: this one only
        self.frontends: tuple = ()
        self._heartbeat = P.encode(P.Heartbeat())
        self._reset = P.encode(P.Reset())
        self._shutdown = P.encode(P.Shutdown())
        self._task: asyncio.Task | None = None
        self._malformed = RateLimitedLog(log.rpc)
        self._refusals = RateLimitedLog(log.rpc)
        self._impostors = RateLimitedLog(log.rpc)
        self._strays = RateLimitedLog(log.rpc)

    @property
    def protocol_errors(self) -> int:
        return self._malformed.count

    @property
    def refused(self) -> int:
        return self._refusals.count + self._impostors.count

    @property
    def endpoint(self) -> str:
        return self.transport.endpoint

    @property
    def local_endpoint(self) -> str:
        """The endpoint for replicas on this machine (see :func:`local_rpc_address`), or
        "" when they use :attr:`endpoint`."""
        return self.transport.local_endpoint

    def start(self) -> str:
        endpoint = self.transport.bind()
        self._task = asyncio.get_running_loop().create_task(self._heartbeats())
        log.rpc.info("RPC server listening on %s", endpoint)
        return endpoint

    async def close(self, shutdown_replicas: bool = True) -> None:
        """Close the socket; ``shutdown_replicas``: tell every replica to exit first (not
        when other frontends of the cluster go on using them)."""
        await cancel_and_wait(self._task)
        if shutdown_replicas:
            shutdown = P.encode(P.Shutdown())
            for r in self.scheduler.replicas():
                self._send(r.identity, shutdown)
        self.transport.close()

    def set_frontends(self, addresses) -> None:
        """Tell every connected replica (and each that registers from now on) the RPC
        addresses of all frontends of the cluster, so that it serves each of them."""
        addresses = tuple(sorted(addresses))
        if addresses == self.frontends:
            return
        self.frontends = addresses
        self._registered = P.encode(P.Registered(int(self.hb_interval * 1000), addresses))
        for r in self.scheduler.replicas():
            # v3 replicas (legacy endpoint) are not on this socket: the send fails, harmless
            self.transport.send(r.identity, self._registered)

    def _on_message(self, identity: bytes, frames: list) -> None:
        try:
            msg = P.decode(frames)
        except ProtocolError as e:
            # one bad peer must not flood the log
            self._malformed.warning("dropped a malformed message from peer %r: %s%s",
                                    identity, e, V3_HINT if looks_like_v3(frames) else "")
            return
        sched = self.scheduler
        if isinstance(msg, P.Result):
            if not sched.on_result(identity, msg):
                self._unknown(identity)
        elif isinstance(msg, P.Heartbeat):
            if not sched.touch(identity):
                self._unknown(identity)
        elif isinstance(msg, P.Register):
            old = sched.replica_by_instance(msg.instance_id)
            if (old is not None and old.identity != identity
                    and self.transport.send(old.identity, self._heartbeat)):
                # the instance id belongs to a peer that is still connected (a send to a
                # disconnected identity fails at once: ROUTER_MANDATORY): an impostor, or a
                # copy of a replica; the live one keeps its place
                self._impostors.warning("refused a registration as replica %s of %s:%s from "
                                        "another peer while that replica is connected",
                                        msg.instance_id, msg.model_name, msg.model_version)
            elif sched.add_replica(identity, msg) is None:
                self._refusals.warning("refused replica %s of unknown model %s:%s",
                                       msg.instance_id, msg.model_name, msg.model_version)
                if (msg.model_name, msg.model_version) in sched.removed:
                    # a version that is gone (deleted): tell its replica to stop instead of
                    # letting it re-register every second forever
                    self.transport.send(identity, self._shutdown)
            else:
                self.transport.send(identity, self._registered)
        elif isinstance(msg, P.Error):
            if not sched.on_error(identity, msg):
                self._unknown(identity)
        else:
            self._strays.warning("peer %r sent %s, which only the frontend sends", identity,
                                 type(msg).__name__)

    def _unknown(self, identity: bytes) -> None:
        if not self.scheduler.knows(identity):
            # a container we do not know (we restarted, or dropped it): ask it to register
            self.transport.send(identity, self._reset)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.hb_interval)
            try:
                for r in self.scheduler.replicas():
                    self._send(r.identity, self._heartbeat)
                self.scheduler.sweep(clock.now(), self.hb_timeout)
            except Exception:
                log.rpc.exception("heartbeat round failed")
