"""Frozen, validated configuration objects."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

from clipper_rpc.protocol import INPUT_TYPES

from .errors import ConfigError, brief

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

DEFAULT_QUERY_PORT = 1337
DEFAULT_MGMT_PORT = 1338
DEFAULT_RPC_PORT = 7000
DEFAULT_STATE_DIR = os.path.join(os.path.expanduser("~"), ".clipper")
#: budget of the prediction cache (``clipper start --cache-bytes``)
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


#: how deep a stored JSON value (an app's default output, policy parameters) may nest: it is
#: serialised into every default answer and the state store
MAX_JSON_DEPTH = 64


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON value, counted without recursion, stopping past ``limit``."""
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > limit:
            return depth
        nxt = []
        for v in level:
            if isinstance(v, list):
                nxt.extend(v)
            elif isinstance(v, dict):
                nxt.extend(v.values())
        level = nxt
    return depth - 1 if depth else 0


def check_name(name: Any, what: str) -> str:
    """A model or app name must be a DNS-1123 label."""
    if not isinstance(name, str) or len(name) > 63 or not DNS1123.match(name):
        raise ConfigError(
            f"{what} must be a DNS-1123 label (lower-case letters, digits and '-', starting "
            f"and ending with a letter or digit, at most 63 characters), got {brief(name)}")
    return name


def check_version(version: Any) -> str:
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ConfigError(
            "model version must be 1-63 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, got {brief(version)}")
    return version


#: the original Clipper's spellings of the input types (its clients and containers use them)
INPUT_TYPE_ALIASES = {
    **{a: "bytes" for a in ("bytes", "byte", "b")},
    **{a: "ints" for a in ("ints", "int", "integer", "integers", "i")},
    **{a: "floats" for a in ("floats", "float", "f")},
    **{a: "doubles" for a in ("doubles", "double", "d")},
    **{a: "strings" for a in ("strings", "string", "str", "strs", "s")},
}


def check_input_type(input_type: Any) -> str:
    """The input type's canonical name; the original Clipper's aliases (``integers``,
    ``int``, ``i``, ``double``, ``d``, ``str``, ...) are accepted."""
    canonical = (INPUT_TYPE_ALIASES.get(input_type.strip().lower())
                 if isinstance(input_type, str) else None)
    if canonical is None:
        raise ConfigError(f"input_type must be one of {', '.join(INPUT_TYPES)} (or one of the "
                          f"original Clipper's aliases: integers, int, i, double, d, str, ...), "
                          f"got {brief(input_type)}")
    return canonical


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``clipper start`` can be told.  Port 0 picks a free port."""

    state_dir: str = DEFAULT_STATE_DIR
    #: the state store: None (state.db in state_dir) or redis://HOST:PORT/DB, shared by
    #: several frontends
    state: str | None = None
    query_host: str = "127.0.0.1"
    query_port: int = DEFAULT_QUERY_PORT
    mgmt_host: str = "127.0.0.1"
    mgmt_port: int = DEFAULT_MGMT_PORT
    rpc_host: str = "127.0.0.1"
    rpc_port: int = DEFAULT_RPC_PORT
    #: required on the management API when it is bound to a non-loopback address
    mgmt_token: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    #: the management API's own body limit (closures are pickled into the body)
    mgmt_max_body_bytes: int = 64 * 1024 * 1024
    #: CURVE authentication of model replicas on the RPC socket (off: loopback only)
    rpc_auth: bool = True
    #: a larger RPC message disconnects its sender before it is buffered
    rpc_max_message_bytes: int = 64 * 1024 * 1024
    #: connections the query port holds at most (also bounded by the open-file limit)
    max_connections: int = 10_000
    #: requests each HTTP port works on at once; more are answered 503 unread
    max_in_flight: int = 8192
    #: several frontends of one cluster (state in Redis) on this machine share the query
    #: port (SO_REUSEPORT: the kernel spreads the connections over them, no load balancer)
    reuse_port: bool = False
    #: a connection that has not sent a complete request within this long is closed
    idle_timeout_s: float = 15.0
    #: a connection idle between requests for this long is closed (aiohttp's default)
    keepalive_timeout_s: float = 75.0
    #: an announced request body must arrive within this long (408)
    body_timeout_s: float = 30.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    queue_capacity: int = 20_000
    #: AIMD defaults (the app's SLO sets the budget)
    aimd_step: int = 2
    aimd_backoff: float = 0.9
    aimd_cap: int = 1024
    demo: bool = False
    #: bytes the prediction cache may hold (0 stores nothing; identical queries in flight
    #: still share one model call)
    cache_bytes: int = DEFAULT_CACHE_BYTES
    #: the original Clipper's containers (RPC protocol v3) connect here; None = off.  They
    #: cannot authenticate, so it listens on loopback unless the operator names a host
    legacy_rpc_port: int | None = None
    legacy_rpc_host: str = "127.0.0.1"
    #: where replicas run: "local" processes, "docker" containers or "swarm" services
    backend: str = "local"
    #: several frontends (state in Redis): how long the deployer lease lasts unrenewed, so
    #: about how long deployment pauses when the deploying frontend dies
    deployer_lease_s: float = 3.0
    #: swarm: push replica images to a registry Clipper runs on this port of the manager
    #: (Debian's docker-registry; services name them 127.0.0.1:PORT/...@digest); None = off
    registry_port: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("local", "docker", "swarm"):
            raise ConfigError(f"backend must be 'local', 'docker' or 'swarm', got "
                              f"{self.backend!r}")
        if self.registry_port is not None and self.backend != "swarm":
            raise ConfigError(f"a registry (registry_port) is for the swarm backend, not "
                              f"{self.backend!r}: the other backends run images where they "
                              "are built")
        for name in ("query_port", "mgmt_port", "rpc_port", "legacy_rpc_port",
                     "registry_port"):
            p = getattr(self, name)
            if p is None and name in ("legacy_rpc_port", "registry_port"):
                continue
            if name == "registry_port" and p == 0:
                raise ConfigError("registry_port must be a port number 1-65535, got 0 (the "
                                  "nodes need to know it)")
            if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 65535:
                raise ConfigError(f"{name} must be a port number 0-65535, got {brief(p)}")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.heartbeat_interval_s <= 0 or self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError("need 0 < heartbeat_interval_s < heartbeat_timeout_s")
        if self.queue_capacity < 1:
            raise ConfigError("queue_capacity must be at least 1")
        if (not isinstance(self.cache_bytes, int) or isinstance(self.cache_bytes, bool)
                or not 0 <= self.cache_bytes < 2**62):
            raise ConfigError(f"cache_bytes must be a number of bytes >= 0, "
                              f"got {brief(self.cache_bytes)}")
        if not is_loopback(self.mgmt_host) and not self.mgmt_token:
            raise ConfigError(
                f"the management API deploys code: binding it to {self.mgmt_host} needs a "
                "token (--mgmt-token-file or CLIPPER_MGMT_TOKEN)")
        if not self.rpc_auth and not is_loopback(self.rpc_host):
            raise ConfigError(
                f"the model RPC without authentication lets anyone who reaches it answer "
                f"for a model: binding it to {self.rpc_host} needs authentication on (drop "
                "--insecure-rpc)")
        if self.reuse_port and not (self.state or "").startswith("redis://"):
            raise ConfigError(
                "--reuse-port lets several frontends of one cluster share the query port; "
                "they must share their state too: start each with --state redis://HOST:PORT/DB "
                "(frontends with a state of their own would answer the same app differently)")
        for name in ("max_connections", "max_in_flight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {brief(v)}")
        for name in ("idle_timeout_s", "keepalive_timeout_s", "body_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 86400:
                raise ConfigError(f"{name} must be a positive number of seconds, got {brief(v)}")
        v = self.deployer_lease_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.3 <= v <= 300:
            raise ConfigError(f"deployer_lease_s must be 0.3..300 seconds, got {brief(v)}")
        if self.mgmt_max_body_bytes < 1024:
            raise ConfigError("mgmt_max_body_bytes must be at least 1024")
        if self.rpc_max_message_bytes < 64 * 1024:
            raise ConfigError("rpc_max_message_bytes must be at least 65536")

    @property
    def rpc_address(self) -> str:
        return f"tcp://{self.rpc_host}:{self.rpc_port}"

    @property
    def legacy_rpc_address(self) -> str | None:
        if self.legacy_rpc_port is None:
            return None
        return f"tcp://{self.legacy_rpc_host}:{self.legacy_rpc_port}"


@dataclass(frozen=True)
class AppConfig:
    name: str
    input_type: str
    default_output: Any = None
    slo_micros: int = 100_000
    policy: str = "single"
    policy_params: dict = field(default_factory=dict)
    cache_enabled: bool = True
    #: answers older than this many seconds are not served from the cache (None: no limit)
    cache_ttl_s: float | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "application name")
        object.__setattr__(self, "input_type", check_input_type(self.input_type))
        if (not isinstance(self.slo_micros, int) or isinstance(self.slo_micros, bool)
                or not 1_000 <= self.slo_micros <= 600_000_000):
            raise ConfigError("latency_slo_micros must be an integer between 1000 (1 ms) and "
                              f"600000000 (10 min), got {brief(self.slo_micros)}")
        if not isinstance(self.policy_params, dict):
            raise ConfigError("policy_params must be a JSON object")
        for what in ("default_output", "policy_params"):
            if json_depth(getattr(self, what)) > MAX_JSON_DEPTH:
                raise ConfigError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        if not isinstance(self.cache_enabled, bool):
            raise ConfigError("cache_enabled must be true or false, got "
                              f"{brief(self.cache_enabled)}")
        ttl = self.cache_ttl_s
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not 0 < ttl < float("inf")):
            raise ConfigError("cache_ttl_s must be a positive number of seconds or null (no "
                              f"limit), got {brief(ttl)}")

    def to_json(self) -> dict:
        return {"name": self.name, "input_type": self.input_type,
                "default_output": self.default_output, "latency_slo_micros": self.slo_micros,
                "policy": self.policy, "policy_params": self.policy_params,
                "cache_enabled": self.cache_enabled, "cache_ttl_s": self.cache_ttl_s}


@dataclass(frozen=True)
class ModelVersion:
    """One deployed version of a model and how to run its replicas."""

    name: str
    version: str
    input_type: str
    batch_size: int = -1
    labels: tuple = ()
    #: how the container manager starts a replica: {"kind": "closure", "path": ...},
    #: {"kind": "framework", "framework": ..., "path": ..., "format": ..., "options": {...}}
    #: (a ready-made runtime, model_runtimes/<framework>), {"kind": "command", "argv": [...]},
    #: or {"kind": "external"} (you start them yourself)
    runtime: dict = field(default_factory=lambda: {"kind": "external"})
    replicas: int = 1
    gpus: tuple = ()

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        object.__setattr__(self, "version", check_version(self.version))
        object.__setattr__(self, "input_type", check_input_type(self.input_type))
        if (not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool)
                or self.batch_size == 0 or self.batch_size < -1 or self.batch_size > 100_000):
            raise ConfigError("batch_size must be -1 (adaptive) or 1..100000, "
                              f"got {brief(self.batch_size)}")
        if not isinstance(self.replicas, int) or not 0 <= self.replicas <= 256:
            raise ConfigError(f"num_replicas must be 0..256, got {brief(self.replicas)}")
        if not isinstance(self.runtime, dict) or self.runtime.get("kind") not in (
                "closure", "framework", "command", "image", "external"):
            raise ConfigError("runtime kind must be closure, framework, command, image or "
                              "external")

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def to_json(self) -> dict:
        return {"model_name": self.name, "model_version": self.version,
                "input_type": self.input_type, "batch_size": self.batch_size,
                "labels": list(self.labels), "runtime": self.runtime,
                "num_replicas": self.replicas, "gpus": list(self.gpus)}
