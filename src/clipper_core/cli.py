"""The ``clipper`` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from typing import Any

from . import log
from .config import (DEFAULT_CACHE_BYTES, DEFAULT_MGMT_PORT, DEFAULT_QUERY_PORT,
                     DEFAULT_RPC_PORT, DEFAULT_STATE_DIR, ServerConfig)
from .errors import ClipperError, ConfigError


def _read_token(path: str | None) -> str | None:
    """The management token: from ``path`` (``--mgmt-token-file``), else
    ``$CLIPPER_MGMT_TOKEN_FILE``, else ``$CLIPPER_MGMT_TOKEN``.  Never from the command line,
    which every local user can read in the process list."""
    path = path or os.environ.get("CLIPPER_MGMT_TOKEN_FILE")
    if path:
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the management token file {path}: "
                              f"{e.strerror or e}") from None
        if not token:
            raise ConfigError(f"the management token file {path} is empty")
        return token
    return os.environ.get("CLIPPER_MGMT_TOKEN") or None


def _start(args: argparse.Namespace) -> int:
    log.configure(args.log_level)
    try:
        if args.mgmt_token is not None:
            raise ConfigError("--mgmt-token would show the token in the process list: put it "
                              "in a file (--mgmt-token-file) or in $CLIPPER_MGMT_TOKEN")
        cfg = ServerConfig(
            state_dir=args.state_dir, query_host=args.host, query_port=args.query_port,
            mgmt_host=args.mgmt_host, mgmt_port=args.mgmt_port, rpc_host=args.rpc_host,
            rpc_port=args.rpc_port, mgmt_token=_read_token(args.mgmt_token_file),
            rpc_auth=not args.insecure_rpc, demo=args.demo, cache_bytes=args.cache_bytes,
            max_connections=args.max_connections, max_in_flight=args.max_in_flight,
            idle_timeout_s=args.idle_timeout, keepalive_timeout_s=args.keepalive_timeout,
            body_timeout_s=args.body_timeout,
            legacy_rpc_port=args.legacy_rpc_port, legacy_rpc_host=args.legacy_rpc_host,
            backend=args.backend, registry_port=args.registry_port, state=args.state,
            deployer_lease_s=args.deployer_lease, reuse_port=args.reuse_port)
    except ClipperError as e:
        print(f"clipper: {e.cause}", file=sys.stderr)
        return 2
    import uvloop

    from .server import ClipperServer

    async def main() -> int:
        server = ClipperServer(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(server.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Ctrl-C during start-up
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await server.stop()
            return 130
        try:
            starting.result()
        except ClipperError as e:
            print(f"clipper: {e.cause}", file=sys.stderr)
            stopping.cancel()
            await server.stop()
            return 2
        # everything allocated so far lives as long as the process: out of the cyclic
        # collector's sight, a full collection no longer walks it (40 ms with every
        # query in flight waiting, 0.2 % of the answers of an overload run late by it)
        gc.collect()
        gc.freeze()
        q = server.endpoints["query"]
        print(f"Clipper is running: queries on {q}, management on "
              f"{server.endpoints['management']}. Ctrl-C stops it.", flush=True)
        if cfg.demo:
            print("Try the demo app:\n  curl -s -X POST -H 'Content-Type: application/json' "
                  f"-d '{{\"input\": [1.0, 2.0, 3.0]}}' {q}/demo/predict", flush=True)
        await stopping
        await server.stop()
        return 0

    return uvloop.run(main())


_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def byte_size(text: str) -> int:
    """``"67108864"``, ``"64MiB"``, ``"500MB"`` or ``"1GiB"`` as a number of bytes."""
    t = text.strip().lower()
    digits = t.rstrip("kmgib")
    unit = t[len(digits):]
    try:
        n = float(digits)
    except ValueError:
        n = -1.0
    if unit not in _UNITS or not 0 <= n < 2**62 or n != n:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 67108864, 64MiB or 500MB, got {text!r}")
    return int(n * _UNITS[unit])


def _endpoints(state_dir: str) -> dict | None:
    try:
        with open(os.path.join(state_dir, "endpoints.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stop(args: argparse.Namespace) -> int:
    ep = _endpoints(args.state_dir)
    if ep is None:
        print(f"clipper: no running Clipper found for state directory {args.state_dir}",
              file=sys.stderr)
        return 1
    pid = ep["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"clipper: process {pid} is gone; removing its stale endpoints file")
        os.unlink(os.path.join(args.state_dir, "endpoints.json"))
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            print(f"Clipper (pid {pid}) stopped")
            return 0
        time.sleep(0.1)
    print(f"clipper: pid {pid} did not stop within {args.timeout} s", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- client commands
class CliError(Exception):
    """A message for the user; the command exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conn(args: argparse.Namespace):
    """The ClipperConnection for --management-url, $CLIPPER_MANAGEMENT_URL, or the Clipper
    running on --state-dir (its endpoints.json)."""
    from .admin import ClipperConnection

    url = args.management_url or os.environ.get("CLIPPER_MANAGEMENT_URL")
    if not url:
        ep = _endpoints(args.state_dir)
        if ep is None or "management" not in ep:
            raise CliError(f"no running Clipper found for state directory {args.state_dir} "
                           "(start one with `clipper start`, or pass --management-url)")
        if not _alive(ep.get("pid")):
            raise CliError(f"the Clipper recorded in {args.state_dir} (pid {ep.get('pid')}) is "
                           "not running; start it again with `clipper start`")
        url = ep["management"]
    try:
        token = _read_token(args.mgmt_token_file)
    except ConfigError as e:
        raise CliError(e.cause) from None
    return ClipperConnection(url, token=token)


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[("-" if v is None or v == "" else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _apps_table(apps: list[dict]) -> str:
    return _table(["APP", "INPUT", "SLO(ms)", "DEFAULT", "POLICY", "MODELS"],
                  [[a["name"], a["input_type"], f"{a['latency_slo_micros'] / 1000:g}",
                    json.dumps(a.get("default_output")), a.get("policy", "single"),
                    ",".join(a.get("linked_models", []))] for a in apps])


def _models_table(models: list[dict]) -> str:
    return _table(["MODEL", "VERSION", "CURRENT", "INPUT", "REPLICAS", "CONNECTED", "HEALTHY",
                   "RUNTIME"],
                  [[m["model_name"], m["model_version"], "yes" if m["is_current_version"] else "",
                    m["input_type"], m["num_replicas"], m["connected_replicas"],
                    m.get("healthy_replicas", ""), m.get("runtime", {}).get("kind", "")]
                   for m in models])


def _replicas_table(containers: list[dict]) -> str:
    nodes = any("node" in c for c in containers)  # the swarm backend places them on nodes
    return _table(["MODEL:VERSION", "REPLICA", "PID", "STATE", "CONNECTED", "HEALTHY",
                   "RESTARTS"] + (["NODE"] if nodes else []),
                  [[f"{c['model_name']}:{c['model_version']}", c["instance_id"], c.get("pid"),
                    c["state"], "yes" if c.get("connected") else "no",
                    "yes" if c.get("healthy") else "no", c.get("restarts", 0)]
                   + ([c.get("node") or "-"] if nodes else [])
                   for c in containers])


def _status(args: argparse.Namespace) -> int:
    conn = _conn(args)
    apps = conn.get_all_apps(verbose=True)
    models = conn.get_all_models(verbose=True)
    containers = conn.get_all_model_replicas(verbose=True)
    text = (f"Clipper at {conn.url}\n\nAPPS\n{_apps_table(apps)}\n\nMODELS\n"
            f"{_models_table(models)}\n\nREPLICAS\n{_replicas_table(containers)}")
    _out(args, {"management_url": conn.url, "apps": apps, "models": models,
                "replicas": containers}, text)
    return 0


def _apps(args: argparse.Namespace) -> int:
    apps = _conn(args).get_all_apps(verbose=True)
    _out(args, apps, _apps_table(apps))
    return 0


def _models(args: argparse.Namespace) -> int:
    models = _conn(args).get_all_models(verbose=True)
    _out(args, models, _models_table(models))
    return 0


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise CliError(f"{what} must be JSON (e.g. 0.0, \"label\", [1, 2]), got {text!r}: {e}",
                       2) from None


def load_function(spec: str):
    """The function named by ``path/to/file.py:function`` or ``module:function``."""
    import importlib
    import importlib.util

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise CliError(f"give the function as path/to/file.py:function or module:function, "
                       f"got {spec!r}", 2)
    try:
        if target.endswith(".py") or os.sep in target or "/" in target:
            path = os.path.abspath(target)
            if not os.path.isfile(path):
                raise CliError(f"no such file: {target}", 2)
            # a private module name: the user's file must not shadow an installed module
            base = "".join(c if c.isalnum() else "_" for c in
                           os.path.splitext(os.path.basename(path))[0])
            name = f"clipper_deployed_{base}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            if mod_spec is None or mod_spec.loader is None:
                raise CliError(f"cannot load {target} as Python source", 2)
            mod = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = mod  # cloudpickle ships it by value from here
            sys.path.insert(0, os.path.dirname(path))
            mod_spec.loader.exec_module(mod)
        else:
            sys.path.insert(0, os.getcwd())
            mod = importlib.import_module(target)
    except CliError:
        raise
    except Exception as e:  # the user's code raised while loading: say so, no traceback
        raise CliError(f"cannot load {target}: {type(e).__name__}: {e}", 2) from None
    fn: Any = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise CliError(f"{target} has no attribute {attr!r}", 2)
        fn = getattr(fn, part)
    if not callable(fn):
        raise CliError(f"{spec} is not callable (it is a {type(fn).__name__})", 2)
    return fn


def _deploy(args: argparse.Namespace) -> int:
    fn = load_function(args.function)
    warm = None if args.warmup_input is None else _json_arg(args.warmup_input,
                                                            "--warmup-input")
    conn = _conn(args)
    if args.app:
        conn.get_app_info(args.app)  # fail before deploying when the app does not exist
    mv = conn.deploy_python_closure(args.name, args.version, args.input_type, fn,
                                    num_replicas=args.replicas, batch_size=args.batch_size,
                                    labels=args.label, warmup_input=warm,
                                    ready_timeout_s=args.timeout, cpus=args.cpus,
                                    memory=args.memory, gpus=_gpus_arg(args.gpus),
                                    constraints=args.constraint or None)
    if args.app:
        conn.link_model_to_app(args.app, args.name)
    text = (f"deployed {mv['model_name']}:{mv['model_version']} with {mv['num_replicas']} "
            "replica(s); it is the current version"
            + (f", linked to app {args.app}" if args.app else ""))
    _out(args, {"model": mv, "linked_app": args.app}, text)
    return 0


def _gpus_arg(text: str | None) -> list | None:
    if text is None:
        return None
    return [g.strip() for g in text.split(",") if g.strip()]


def _logs(args: argparse.Namespace) -> int:
    name, _, version = args.model.partition(":")
    reps = _conn(args).get_logs(name, version or None, args.tail)
    if args.json:
        _out(args, reps, "")
        return 0
    if not reps:
        print(f"model {args.model} has no replicas", file=sys.stderr)
        return 1
    for r in reps:
        print(f"==> {r['model_name']}:{r['model_version']} replica {r['instance_id']} <==")
        print(r["log"].rstrip("\n"))
    return 0


def _deploy_model(args: argparse.Namespace) -> int:
    from .deployers import deploy_file

    warm = None if args.warmup_input is None else _json_arg(args.warmup_input,
                                                            "--warmup-input")
    options: dict[str, Any] = {"method": args.method, "dtype": args.dtype,
                               "input": args.input_name}
    if args.input_shape:
        try:
            options["input_shape"] = [int(d) for d in args.input_shape.split(",")]
        except ValueError:
            raise CliError(f"--input-shape must be integers separated by commas, e.g. "
                           f"1,28,28, got {args.input_shape!r}", 2) from None
    if args.output is not None:
        options["output"] = int(args.output) if args.output.isdigit() else args.output
    if args.classes is not None:
        options["classes"] = _json_arg(args.classes, "--classes")
    if not os.path.isfile(args.file):
        raise CliError(f"no such file: {args.file}", 2)
    conn = _conn(args)
    if args.app:
        conn.get_app_info(args.app)  # fail before deploying when the app does not exist
    gpus = _gpus_arg(args.gpus) or []
    mv = deploy_file(conn, args.framework, args.name, args.version, args.input_type,
                     args.file, artifact_format=args.format, num_replicas=args.replicas,
                     batch_size=args.batch_size, labels=args.label, gpus=gpus,
                     warmup_input=warm, ready_timeout_s=args.timeout, **options)
    if args.app:
        conn.link_model_to_app(args.app, args.name)
    text = (f"deployed {mv['model_name']}:{mv['model_version']} ({args.framework}) with "
            f"{mv['num_replicas']} replica(s); it is the current version"
            + (f", linked to app {args.app}" if args.app else ""))
    _out(args, {"model": mv, "linked_app": args.app}, text)
    return 0


def _register_app(args: argparse.Namespace) -> int:
    default = None if args.default_output is None else _json_arg(args.default_output,
                                                                 "--default-output")
    app = _conn(args).register_application(args.name, args.input_type, default,
                                           int(round(args.slo_ms * 1000)))
    _out(args, app, f"registered app {app['name']} ({app['input_type']}, SLO "
                    f"{app['latency_slo_micros'] / 1000:g} ms)")
    return 0


def _unregister_app(args: argparse.Namespace) -> int:
    _conn(args).unregister_application(args.name)
    _out(args, {"success": True}, f"unregistered app {args.name}")
    return 0


def _link(args: argparse.Namespace) -> int:
    _conn(args).link_model_to_app(args.app, args.model)
    _out(args, {"success": True}, f"linked model {args.model} to app {args.app}")
    return 0


def _unlink(args: argparse.Namespace) -> int:
    _conn(args).unlink_model_from_app(args.app, args.model)
    _out(args, {"success": True}, f"unlinked model {args.model} from app {args.app}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    mv = _conn(args).set_model_version(args.model, args.version)
    _out(args, mv, f"model {args.model} now serves version {mv['model_version']}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    mv = _conn(args).set_num_replicas(args.model, args.replicas, args.version)
    _out(args, mv, f"model {mv['model_name']}:{mv['model_version']} scaled to "
                   f"{mv['num_replicas']} replica(s)")
    return 0


def _delete_version(args: argparse.Namespace) -> int:
    mv = _conn(args).delete_versioned_model(args.model, args.version)
    _out(args, mv, f"deleted model {mv['model_name']}:{mv['model_version']}")
    return 0


def _nonneg_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clipper", description="Clipper prediction serving")
    ap.add_argument("--state-dir", default=os.environ.get("CLIPPER_STATE_DIR",
                                                          DEFAULT_STATE_DIR),
                    help="directory of Clipper's state (state.db, logs, endpoints.json) "
                         "(default: $CLIPPER_STATE_DIR, else ~/.clipper)")
    # the client commands also take --state-dir after the command name
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="find the running Clipper through this state directory "
                             "(default: $CLIPPER_STATE_DIR, else ~/.clipper)")
    client.add_argument("--management-url", default=None,
                        help="management API URL (default: the Clipper of --state-dir)")
    client.add_argument("--mgmt-token-file", default=None,
                        help="file holding the management API token (default: "
                             "$CLIPPER_MGMT_TOKEN_FILE, else $CLIPPER_MGMT_TOKEN)")
    client.add_argument("--json", action="store_true",
                        help="print JSON instead of a table (default: a table)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("start", help="run Clipper in the foreground")
    s.add_argument("--state-dir", default=argparse.SUPPRESS,
                   help="directory for state.db, replica logs and closures; one Clipper per "
                        "directory (default: $CLIPPER_STATE_DIR, else ~/.clipper)")
    s.add_argument("--state", default=None, metavar="URL",
                   help="where apps, models, links and policy states live: redis://HOST:PORT/DB "
                        "shares them between several frontends (each with its own --state-dir "
                        "and ports) (default: state.db in --state-dir)")
    s.add_argument("--deployer-lease", type=float, default=3.0, metavar="SECONDS",
                   help="with --state redis://: the frontend holding the deployer lease starts "
                        "and supervises the replicas; when it dies another takes over after "
                        "about this long (default 3)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address the query API listens on (default 127.0.0.1)")
    s.add_argument("--query-port", type=int, default=DEFAULT_QUERY_PORT,
                   help=f"port of the query API: /{{app}}/predict, OIP v2, /metrics; 0 picks a "
                        f"free one (default {DEFAULT_QUERY_PORT})")
    s.add_argument("--mgmt-host", default="127.0.0.1",
                   help="address the management API and dashboard listen on; anything but "
                        "loopback needs a token (--mgmt-token-file) (default 127.0.0.1)")
    s.add_argument("--mgmt-port", type=int, default=DEFAULT_MGMT_PORT,
                   help=f"port of the management API and of the dashboard at /; 0 picks a "
                        f"free one (default {DEFAULT_MGMT_PORT})")
    s.add_argument("--mgmt-token-file", default=None,
                   help="file holding the token the management API and the dashboard require "
                        "as 'Authorization: Bearer TOKEN' (default: $CLIPPER_MGMT_TOKEN_FILE, "
                        "else $CLIPPER_MGMT_TOKEN, else none; needed when --mgmt-host is not "
                        "a loopback address)")
    s.add_argument("--mgmt-token", default=None,
                   help="refused: a token on the command line shows in the process list; "
                        "use --mgmt-token-file (default: none)")
    s.add_argument("--max-connections", type=int, default=10_000,
                   help="connections the query port holds at most (default 10000; also "
                        "bounded by the open-file limit)")
    s.add_argument("--max-in-flight", type=int, default=8192,
                   help="requests held at once per port; beyond it a query gets its app's "
                        "default output, anything else 503 (default 8192)")
    s.add_argument("--reuse-port", action="store_true",
                   help="with --state redis://: share the query port with the other "
                        "frontends of the cluster on this machine started with it too "
                        "(SO_REUSEPORT: the kernel spreads connections over them, no load "
                        "balancer needed) (default: off)")
    s.add_argument("--idle-timeout", type=float, default=15.0,
                   help="seconds a new connection has to send a complete request (slow or "
                        "no headers) before it is closed (default 15)")
    s.add_argument("--keepalive-timeout", type=float, default=75.0,
                   help="seconds a connection may stay idle between requests (default 75)")
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds an announced request body has to arrive (default 30)")
    s.add_argument("--insecure-rpc", action="store_true",
                   help="accept model replicas without CURVE credentials (loopback only; "
                        "default: off, replicas must authenticate)")
    s.add_argument("--rpc-host", default="127.0.0.1",
                   help="address model replicas connect to over ZeroMQ (default 127.0.0.1)")
    s.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT,
                   help="model RPC port; keep it across restarts so that running replicas "
                        f"reconnect and are re-adopted (default {DEFAULT_RPC_PORT})")
    s.add_argument("--legacy-rpc-port", type=int, default=None,
                   help="also serve the original Clipper's model containers (RPC protocol v3, "
                        "unauthenticated) on this port; off by default")
    s.add_argument("--legacy-rpc-host", default="127.0.0.1",
                   help="address of the legacy RPC port (default 127.0.0.1; see "
                        "docs/protocol.md before you open it to a network)")
    s.add_argument("--cache-bytes", type=byte_size, default=DEFAULT_CACHE_BYTES,
                   help="memory budget of the prediction cache, e.g. 64MiB (the default); "
                        "0 caches nothing")
    s.add_argument("--demo", action="store_true",
                   help="deploy the demo app 'demo' (default: off)")
    s.add_argument("--backend", choices=("local", "docker", "swarm"), default="local",
                   help="run replicas as local processes, as Docker containers, or as "
                        "Docker Swarm services (on a swarm manager; see docs/cluster.md) "
                        "(default local)")
    s.add_argument("--registry-port", type=int, default=None,
                   help="swarm backend: run an image registry (Debian's docker-registry) on "
                        "this port of the manager and push replica images there, so that "
                        "every node can pull them (see docs/cluster.md) (default: none; "
                        "images must be on every node)")
    s.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR; the dashboard lists refusals only at "
                        "INFO or below (default INFO)")
    s.set_defaults(fn=_start)
    st = sub.add_parser("stop", help="stop the Clipper running on --state-dir")
    st.add_argument("--state-dir", default=argparse.SUPPRESS,
                    help="the state directory of the Clipper to stop "
                         "(default: $CLIPPER_STATE_DIR, else ~/.clipper)")
    st.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for it to exit (default 30)")
    st.set_defaults(fn=_stop)

    sub.add_parser("status", parents=[client],
                   help="apps, models, versions and replicas with their health"
                   ).set_defaults(fn=_status)
    sub.add_parser("apps", parents=[client], help="list the apps").set_defaults(fn=_apps)
    sub.add_parser("models", parents=[client],
                   help="list the model versions").set_defaults(fn=_models)

    d = sub.add_parser("deploy", parents=[client], help="deploy a Python function as a model",
                       description="Deploy a Python function (a batch in, a list of outputs "
                                   "out) as model NAME version VERSION.  It becomes current "
                                   "once a replica has answered a warm-up call.")
    d.add_argument("name", help="model name (a DNS-1123 label)")
    d.add_argument("version", help="model version")
    d.add_argument("function", help="path/to/file.py:function or module:function")
    d.add_argument("--input-type", required=True,
                   help="ints, floats, doubles, bytes or strings (required)")
    d.add_argument("--replicas", type=_nonneg_int, default=1,
                   help="replica processes to run (default 1)")
    d.add_argument("--batch-size", type=int, default=-1,
                   help="fixed maximum batch size, or -1 for adaptive (AIMD) (default -1)")
    d.add_argument("--app", default=None,
                   help="link the model to this app after deploying (default: link none)")
    d.add_argument("--warmup-input", default=None,
                   help="one input (JSON) the new version must answer before it becomes "
                        "current (default: an empty batch the container answers itself)")
    d.add_argument("--label", action="append", default=[],
                   help="a label for the model version; repeat for several (default: none)")
    d.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the first replica (default 60)")
    d.add_argument("--cpus", type=float, default=None, help="CPUs per replica, e.g. 1.5 (default: no limit)")
    d.add_argument("--memory", default=None, help="memory per replica, e.g. 512m or 2g (default: no limit)")
    d.add_argument("--gpus", default=None,
                   help="GPU ids, comma-separated, one per replica in turn; 'cpu' for a CPU "
                        "replica (e.g. 0,cpu) (default: none, CPU only)")
    d.add_argument("--constraint", action="append", default=[],
                   help="a swarm placement constraint for the replicas, e.g. "
                        "node.labels.zone==eu-1; repeat for several; ignored by the local and "
                        "docker backends (default: none)")
    d.set_defaults(fn=_deploy)
    lg = sub.add_parser("logs", parents=[client], help="show the log of a model's replicas")
    lg.add_argument("model", help="MODEL or MODEL:VERSION")
    lg.add_argument("--tail", type=int, default=200, help="lines per replica (default 200)")
    lg.set_defaults(fn=_logs)

    from model_runtimes.frameworks import FRAMEWORKS

    dm = sub.add_parser("deploy-model", parents=[client],
                        help="deploy a model file with a framework's ready-made runtime",
                        description="Deploy a saved model (XGBoost .json, LightGBM .txt, "
                                    "scikit-learn .joblib, .onnx, TorchScript .pt) as model "
                                    "NAME version VERSION.  The file is sent to Clipper; the "
                                    "framework need not be installed here.")
    dm.add_argument("framework", choices=list(FRAMEWORKS),
                    help="the runtime: " + ", ".join(FRAMEWORKS) + " (required)")
    dm.add_argument("name", help="model name (a DNS-1123 label)")
    dm.add_argument("version", help="model version")
    dm.add_argument("file", help="the saved model file (required)")
    dm.add_argument("--input-type", required=True,
                    help="ints, floats, doubles (or strings for scikit-learn) (required)")
    dm.add_argument("--format", default=None, help="artifact format (default: the file's "
                    "extension)")
    dm.add_argument("--method", default=None,
                    help="predict (default), predict_proba, predict_margin, ...")
    dm.add_argument("--input-shape", default=None, help="one input's shape, e.g. 1,28,28 (default: as sent)")
    dm.add_argument("--dtype", default=None, help="float32, float64, int32 or int64 (default: the runtime's, or the graph's)")
    dm.add_argument("--input-name", default=None, help="ONNX input to feed (default: the graph's first)")
    dm.add_argument("--output", default=None, help="ONNX output name or tuple index (default: the first)")
    dm.add_argument("--classes", default=None, help="JSON list of class labels (LightGBM) (default: none)")
    dm.add_argument("--replicas", type=_nonneg_int, default=1,
                    help="replicas to run (default 1)")
    dm.add_argument("--batch-size", type=int, default=-1,
                    help="fixed maximum batch size, or -1 for adaptive (AIMD) (default -1)")
    dm.add_argument("--gpus", default=None,
                    help="GPU per replica, comma-separated, e.g. 0,cpu (default: none)")
    dm.add_argument("--app", default=None,
                    help="link the model to this app after deploying (default: link none)")
    dm.add_argument("--warmup-input", default=None,
                    help="one input (JSON) the new version must answer before it becomes "
                         "current (default: an empty batch the container answers itself)")
    dm.add_argument("--label", action="append", default=[],
                    help="a label for the model version; repeat for several (default: none)")
    dm.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for the first replica (default 60)")
    dm.set_defaults(fn=_deploy_model)

    ra = sub.add_parser("register-app", parents=[client], help="register an application")
    ra.add_argument("name", help="application name (a DNS-1123 label)")
    ra.add_argument("--input-type", required=True,
                    help="ints, floats, doubles, bytes or strings (required)")
    ra.add_argument("--default-output", default=None,
                    help="the answer (JSON) when no model answers in time (default: none; "
                         "such queries get a 503)")
    ra.add_argument("--slo-ms", type=float, default=100.0, help="latency SLO (default 100 ms)")
    ra.set_defaults(fn=_register_app)
    ua = sub.add_parser("unregister-app", parents=[client], help="remove an application")
    ua.add_argument("name", help="application name")
    ua.set_defaults(fn=_unregister_app)

    ln = sub.add_parser("link", parents=[client], help="serve an app with a model")
    ln.add_argument("app", help="application name")
    ln.add_argument("model", help="model name")
    ln.set_defaults(fn=_link)
    ul = sub.add_parser("unlink", parents=[client], help="unlink a model from an app")
    ul.add_argument("app", help="application name")
    ul.add_argument("model", help="model name")
    ul.set_defaults(fn=_unlink)
    rb = sub.add_parser("rollback", parents=[client],
                        help="make VERSION the current version of MODEL (instantaneous)")
    rb.add_argument("model", help="model name")
    rb.add_argument("version", help="the version to serve from now on")
    rb.set_defaults(fn=_rollback)
    sc = sub.add_parser("scale", parents=[client], help="set the number of replicas of a model")
    sc.add_argument("model", help="model name")
    sc.add_argument("replicas", type=_nonneg_int, help="the number of replicas wanted")
    sc.add_argument("--version", default=None,
                    help="the version to scale (default: the current version)")
    sc.set_defaults(fn=_scale)
    dv = sub.add_parser("delete-version", parents=[client],
                        help="stop the replicas of a model version and forget it")
    dv.add_argument("model", help="model name")
    dv.add_argument("version", help="the version to delete")
    dv.set_defaults(fn=_delete_version)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CliError as e:
        print(f"clipper: {e}", file=sys.stderr)
        return e.code
    except ClipperError as e:
        print(f"clipper: {e.cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
