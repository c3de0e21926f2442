"""CURVE credentials for the model RPC (ZeroMQ's CurveZMQ, checked through ZAP).

The frontend holds a server key pair; a replica proves it was started for Clipper by holding
a client key pair whose public key the frontend accepts, and it authenticates the frontend by
its public key.  A replica's :class:`Credentials` are the three z85 keys: the frontend's public
key and the replica's own public and secret keys.  They travel as environment variables
(``CLIPPER_RPC_SERVER_KEY``, ``CLIPPER_RPC_PUBLIC_KEY``, ``CLIPPER_RPC_SECRET_KEY``) to replicas
Clipper starts, and as a JSON file (``<state dir>/rpc/credentials.json``) to replicas started
by hand: ``serve(..., credentials="/path/to/credentials.json")``.

This module needs only pyzmq.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import zmq
from zmq.utils import z85

ENV_SERVER_KEY = "CLIPPER_RPC_SERVER_KEY"
ENV_PUBLIC_KEY = "CLIPPER_RPC_PUBLIC_KEY"
ENV_SECRET_KEY = "CLIPPER_RPC_SECRET_KEY"
#: alternatively, the path of a credentials file
ENV_CREDENTIALS = "CLIPPER_RPC_CREDENTIALS"
ENV_NAMES = (ENV_SERVER_KEY, ENV_PUBLIC_KEY, ENV_SECRET_KEY, ENV_CREDENTIALS)

_KEY_LEN = 40
ZAP_DOMAIN = "clipper"  # a z85-encoded 32-byte Curve25519 key


def _key(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes) or len(value) != _KEY_LEN:
        raise ValueError(f"{what} must be a 40-character z85 CURVE key")
    try:
        z85.decode(value)
    except Exception:
        raise ValueError(f"{what} is not valid z85") from None
    return value


@dataclass(frozen=True)
class Credentials:
    """What a replica needs to join: the frontend's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "server_public", _key(self.server_public, "server_public"))
        object.__setattr__(self, "public", _key(self.public, "public"))
        object.__setattr__(self, "secret", _key(self.secret, "secret"))

    def __repr__(self) -> str:  # never print the secret key
        return f"Credentials(server_public={self.server_public!r}, public={self.public!r})"

    # ---------------------------------------------------------------- formats
    def to_env(self) -> dict[str, str]:
        return {ENV_SERVER_KEY: self.server_public.decode(),
                ENV_PUBLIC_KEY: self.public.decode(), ENV_SECRET_KEY: self.secret.decode()}

    def to_json(self) -> dict[str, str]:
        return {"server_public": self.server_public.decode(), "public": self.public.decode(),
                "secret": self.secret.decode()}

    @classmethod
    def from_json(cls, d: Mapping) -> "Credentials":
        if not isinstance(d, Mapping):
            raise ValueError("credentials must be a JSON object with server_public, public "
                             "and secret")
        try:
            return cls(d["server_public"], d["public"], d["secret"])
        except KeyError as e:
            raise ValueError(f"credentials lack {e.args[0]!r}") from None

    @classmethod
    def load(cls, path: str) -> "Credentials":
        with open(path) as f:
            try:
                return cls.from_json(json.load(f))
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None

    def save(self, path: str) -> None:
        """Write to ``path``, readable by its owner only."""
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Credentials | None":
        """The credentials in the environment (keys or a file path), or None."""
        env = os.environ if env is None else env
        if env.get(ENV_SECRET_KEY):
            return cls(env.get(ENV_SERVER_KEY, ""), env.get(ENV_PUBLIC_KEY, ""),
                       env[ENV_SECRET_KEY])
        if env.get(ENV_CREDENTIALS):
            return cls.load(env[ENV_CREDENTIALS])
        return None

    @classmethod
    def coerce(cls, value: "Credentials | str | Mapping | None") -> "Credentials | None":
        """Accept a Credentials, a path to a credentials file, or its JSON as a dict."""
        if value is None or isinstance(value, Credentials):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls.load(os.fspath(value))
        return cls.from_json(value)

    # ---------------------------------------------------------------- sockets
    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before connect) a CURVE client of the frontend."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def new_keypair() -> tuple[bytes, bytes]:
    """(public, secret), z85-encoded."""
    return zmq.curve_keypair()


@dataclass(frozen=True)
class ServerKeys:
    """The frontend's side: its key pair and the client public keys it accepts."""

    public: bytes
    secret: bytes
    clients: frozenset

    def __repr__(self) -> str:
        return f"ServerKeys(public={self.public!r}, clients={len(self.clients)})"


class ServerAuth:
    """Puts CURVE on a server socket and answers its ZAP requests in a thread.

    Only clients whose public key is in ``keys.clients`` complete the handshake; anyone else
    never gets a single message through.
    """

    def __init__(self, keys: ServerKeys, ctx: zmq.Context) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.keys = keys
        self.allowed = set(keys.clients)
        self.denied = 0
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    # called by pyzmq's authenticator thread for each handshake
    def callback(self, domain: str, client_key: bytes) -> bool:
        ok = client_key in self.allowed
        if not ok:
            self.denied += 1
        return ok

    def allow(self, public_keys: Iterable[bytes]) -> None:
        self.allowed.update(public_keys)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before bind) a CURVE server."""
        sock.curve_server = True
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        self._auth.stop()
