"""``clipper-bench``: latency and throughput of a prediction endpoint under load.

Exit status: 0 after a run that got at least one successful answer, 1 when no
request succeeded or the generator failed, 2 for a command line it cannot run,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Sequence

from .loadgen import WorkerError
from .output import Progress, format_table, plot_unavailable, write_csv, write_json, write_plot
from .capacity import find_capacity
from .runner import BenchConfig, SweepResult, random_seed, run_sweep
from .schedule import ARRIVALS
from .target import PROTOCOLS, BenchConfigError, build_target

__all__ = ["build_parser", "config_from_args", "main"]

EPILOG = """\
examples:
  clipper-bench --url http://127.0.0.1:1337/myapp/predict --concurrency 1,8,64 --duration 10 --json out.json
  clipper-bench --url http://127.0.0.1:8080/v2/models/iris/infer --rate 100,1000 --arrivals poisson --seed 7
  clipper-bench --url http://host/score --body-template '{"id": {{i}}, "x": [1, 2]}' --requests 5000

Closed loop (--concurrency): each user sends its next request when the previous
one is answered. Open loop (--rate): requests leave on a schedule whatever the
server does, and latency is measured from the scheduled send time.
Without --duration or --requests a level runs in --window windows until the last
three agree within --stability-pct (throughput and p99), at most --max-windows.
"""


def _list(kind: type, name: str):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes a comma-separated list of numbers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{name} needs at least one value")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clipper-bench",
        description="Measure latency and throughput of a Clipper app, an OIP v2 model or any JSON endpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t = p.add_argument_group("target")
    t.add_argument("--url", required=True, help="endpoint, e.g. http://127.0.0.1:1337/myapp/predict")
    t.add_argument("--protocol", choices=PROTOCOLS, default="auto", help="request format (default: from the URL path)")
    t.add_argument("--input", dest="input_json", metavar="JSON", help="model input as JSON (default: [1.0,2.0,3.0])")
    t.add_argument(
        "--body-template",
        metavar="FILE_OR_JSON",
        help="request body, verbatim; {{i}} is replaced by a request counter",
    )
    t.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header (repeatable)")
    t.add_argument("--method", default="POST", help="HTTP method (default POST)")
    t.add_argument(
        "--stats-url",
        default="auto",
        help="Clipper stats endpoint for the server-side breakdown (default: /stats of a Clipper target; 'none' to skip)",
    )

    ld = p.add_argument_group("load")
    mx = ld.add_mutually_exclusive_group()
    mx.add_argument("--concurrency", type=_list(int, "--concurrency"), help="closed loop: users per level, e.g. 1,8,64")
    mx.add_argument("--rate", type=_list(float, "--rate"), help="open loop: requests/s per level, e.g. 100,1000")
    mx.add_argument(
        "--find-capacity",
        type=_list(float, "--find-capacity"),
        metavar="LO,HI",
        help="open loop: search LO..HI req/s for the highest rate with --capacity-share of the requests "
        "answered by a prediction within --slo-ms",
    )
    ld.add_argument("--capacity-share", type=float, default=0.99, help="for --find-capacity (default 0.99)")
    ld.add_argument("--arrivals", choices=ARRIVALS, default="poisson", help="open-loop schedule (default poisson)")
    ld.add_argument("--seed", type=int, help="seed of the Poisson schedule (default: random, and reported)")
    ld.add_argument("--workers", type=int, default=1, help="generator processes (default 1; 0 runs in this process)")
    ld.add_argument(
        "--max-inflight", type=int, default=10000, help="open loop: most requests outstanding (default 10000)"
    )
    ld.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before a request counts as timed out (default 30)"
    )

    m = p.add_argument_group("measurement")
    m.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS", help="unmeasured load first (default 1)")
    stop = m.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, metavar="SECONDS", help="measure each level this long")
    stop.add_argument("--requests", type=int, metavar="N", help="measure N requests per level")
    m.add_argument("--window", type=float, default=2.0, metavar="SECONDS", help="measurement window (default 2)")
    m.add_argument("--stability-pct", type=float, default=10.0, help="stability tolerance in percent (default 10)")
    m.add_argument("--max-windows", type=int, default=10, help="most windows per level without --duration (default 10)")
    m.add_argument("--slo-ms", type=float, help="report the share of requests answered within this many ms")

    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    o.add_argument("--csv", metavar="FILE", help="write perf_analyzer-style CSV (microseconds)")
    o.add_argument("--plot", metavar="FILE.png", help="plot latency against throughput (needs matplotlib)")
    o.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    return p


def config_from_args(ns: argparse.Namespace) -> BenchConfig:
    """A validated :class:`BenchConfig` from parsed arguments."""
    target = build_target(
        ns.url,
        protocol=ns.protocol,
        input_json=ns.input_json,
        body_template=ns.body_template,
        headers=ns.header,
        method=ns.method,
        stats_url=ns.stats_url,
    )
    if ns.find_capacity is not None:
        if len(ns.find_capacity) != 2 or not 0 < ns.find_capacity[0] < ns.find_capacity[1]:
            raise BenchConfigError(f"--find-capacity takes LO,HI with 0 < LO < HI, got {ns.find_capacity!r}")
        if ns.slo_ms is None:
            raise BenchConfigError("--find-capacity needs --slo-ms")
        if not 0 < ns.capacity_share <= 1:
            raise BenchConfigError(f"--capacity-share must be in (0, 1], got {ns.capacity_share!r}")
        mode, levels = "open", tuple(ns.find_capacity)
    elif ns.rate is not None:
        mode, levels = "open", tuple(ns.rate)
    else:
        mode, levels = "closed", tuple(float(c) for c in (ns.concurrency or (1,)))
    return BenchConfig(
        target=target,
        mode=mode,
        levels=levels,
        arrivals=ns.arrivals,
        seed=ns.seed if ns.seed is not None else random_seed(),
        warmup=ns.warmup,
        duration=ns.duration,
        requests=ns.requests,
        window=ns.window,
        stability_pct=ns.stability_pct,
        max_windows=ns.max_windows,
        slo_ms=ns.slo_ms,
        timeout=ns.timeout,
        max_inflight=ns.max_inflight,
        workers=ns.workers,
    )


def _error(msg: str) -> None:
    print(f"clipper-bench: error: {msg}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clipper-bench`` console script."""
    ns = build_parser().parse_args(argv)
    if ns.plot:
        why = plot_unavailable()
        if why:
            _error(why)
            return 2
    try:
        cfg = config_from_args(ns)
    except BenchConfigError as exc:
        _error(str(exc))
        return 2

    progress = Progress(sys.stderr, enabled=not ns.quiet)
    capacity_line = None
    try:
        if ns.find_capacity is not None:
            started = time.time()
            cap, bounded, levels = asyncio.run(
                find_capacity(cfg, cfg.levels[0], cfg.levels[1], share=ns.capacity_share, progress=progress)
            )
            result = SweepResult(
                config=dataclasses.replace(cfg, levels=tuple(lvl.level for lvl in levels)),
                levels=levels,
                started_at=started,
                finished_at=time.time(),
            )
            what = f"{100 * ns.capacity_share:g}% of requests answered by a prediction within {cfg.slo_ms:g} ms"
            if cap is None:
                capacity_line = f"capacity: below {cfg.levels[0]:g} req/s ({what} fails there)\n"
            else:
                capacity_line = f"capacity: {cap:g} req/s{'' if bounded else ' or more (HI held)'} ({what})\n"
        else:
            result = asyncio.run(run_sweep(cfg, progress))
    except WorkerError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130

    sys.stdout.write(format_table(result))
    if capacity_line:
        sys.stdout.write(capacity_line)
    sys.stdout.flush()
    try:
        if ns.json:
            write_json(result, ns.json)
        if ns.csv:
            write_csv(result, ns.csv)
        if ns.plot:
            write_plot(result, ns.plot)
    except OSError as exc:
        _error(f"cannot write the report: {exc}")
        return 1
    if not any(lvl.ok for lvl in result.levels):
        _error("no request got a successful answer")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
