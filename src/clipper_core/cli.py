"""The ``clipper`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from . import log
from .config import (DEFAULT_CACHE_BYTES, DEFAULT_MGMT_PORT, DEFAULT_QUERY_PORT,
                     DEFAULT_RPC_PORT, DEFAULT_STATE_DIR, ServerConfig)
from .errors import ClipperError


def _start(args: argparse.Namespace) -> int:
    log.configure(args.log_level)
    try:
        cfg = ServerConfig(
            state_dir=args.state_dir, query_host=args.host, query_port=args.query_port,
            mgmt_host=args.mgmt_host, mgmt_port=args.mgmt_port, rpc_host=args.rpc_host,
            rpc_port=args.rpc_port, mgmt_token=args.mgmt_token or os.environ.get(
                "CLIPPER_MGMT_TOKEN"), demo=args.demo, cache_bytes=args.cache_bytes)
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
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"Clipper (pid {pid}) stopped")
            return 0
        time.sleep(0.1)
    print(f"clipper: pid {pid} did not stop within {args.timeout} s", file=sys.stderr)
    return 1


def _status(args: argparse.Namespace) -> int:
    from .admin import ClipperConnection

    ep = _endpoints(args.state_dir)
    url = args.management_url or (ep or {}).get("management")
    conn = ClipperConnection(url)
    try:
        apps = conn.get_all_apps(verbose=True)
        models = conn.get_all_models(verbose=True)
        containers = conn.get_all_model_replicas(verbose=True)
    except ClipperError as e:
        print(f"clipper: {e.cause}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"apps": apps, "models": models, "replicas": containers}, indent=2))
        return 0
    print(f"{'APP':20} {'INPUT':8} {'SLO(ms)':>8}  MODELS")
    for a in apps:
        print(f"{a['name']:20} {a['input_type']:8} {a['latency_slo_micros'] / 1000:>8g}  "
              f"{','.join(a['linked_models']) or '-'}")
    print(f"\n{'MODEL':20} {'VERSION':10} {'CURRENT':8} {'REPLICAS':>8} {'CONNECTED':>9}")
    for m in models:
        print(f"{m['model_name']:20} {m['model_version']:10} "
              f"{'yes' if m['is_current_version'] else '':8} {m['num_replicas']:>8} "
              f"{m['connected_replicas']:>9}")
    print(f"\n{'REPLICA':40} {'PID':>7} {'STATE':10} {'HEALTHY':7} {'RESTARTS':>8}")
    for c in containers:
        print(f"{c['instance_id']:40} {c.get('pid') or '-':>7} {c['state']:10} "
              f"{'yes' if c['healthy'] else 'no':7} {c.get('restarts', 0):>8}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clipper", description="Clipper prediction serving")
    ap.add_argument("--state-dir", default=os.environ.get("CLIPPER_STATE_DIR",
                                                          DEFAULT_STATE_DIR))
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="run Clipper in the foreground")
    s.add_argument("--host", default="127.0.0.1", help="query API address (default 127.0.0.1)")
    s.add_argument("--query-port", type=int, default=DEFAULT_QUERY_PORT)
    s.add_argument("--mgmt-host", default="127.0.0.1")
    s.add_argument("--mgmt-port", type=int, default=DEFAULT_MGMT_PORT)
    s.add_argument("--mgmt-token", default=None)
    s.add_argument("--rpc-host", default="127.0.0.1")
    s.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT)
    s.add_argument("--cache-bytes", type=byte_size, default=DEFAULT_CACHE_BYTES,
                   help="memory budget of the prediction cache, e.g. 64MiB (the default); "
                        "0 caches nothing")
    s.add_argument("--demo", action="store_true", help="deploy the demo app 'demo'")
    s.add_argument("--log-level", default="INFO")
    s.set_defaults(fn=_start)
    st = sub.add_parser("stop", help="stop the Clipper running on --state-dir")
    st.add_argument("--timeout", type=float, default=30.0)
    st.set_defaults(fn=_stop)
    ss = sub.add_parser("status", help="apps, models and replicas")
    ss.add_argument("--management-url", default=None)
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(fn=_status)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
