"""Reports of a sweep: console table, JSON, perf_analyzer-style CSV, plot, progress.

CSV
    The columns of Triton's perf_analyzer, so that tools which read its ``-f``
    output read ours: times in microseconds, averages except the percentiles.
    clipper-bench fills ``Server Queue`` (Clipper's queue delay) and ``Server
    Compute Infer`` (model compute) from the ``/stats`` breakdown, ``Network+Server
    Send/Recv`` with the rest of the mean client latency (so the components add
    up to the mean, as in perf_analyzer), the percentiles from the client, and
    writes 0 where it measures nothing (``Client Send``, ``Server Compute
    Input``/``Output``, ``Client Recv``). Open-loop runs get a leading
    ``Request Rate`` column, and ``Concurrency`` is 0 there.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import IO, Any

from . import _json
from .runner import LevelResult, SweepResult
from .stats import WindowStat

__all__ = [
    "PERF_ANALYZER_COLUMNS",
    "Progress",
    "csv_rows",
    "format_table",
    "plot_unavailable",
    "to_json_bytes",
    "write_csv",
    "write_json",
    "write_plot",
]

PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)
REQUEST_RATE_COLUMN = "Request Rate"


# -- console -----------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    ms = v * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def _num(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return lines


def format_table(result: SweepResult) -> str:
    """The console report: one row per level, then breakdown, errors and warnings."""
    cfg = result.config
    open_loop = cfg.mode == "open"
    workers = "in-process" if cfg.workers == 0 else f"{cfg.workers} worker{'s' if cfg.workers != 1 else ''}"
    loop = f"open loop, {cfg.arrivals} arrivals, seed {cfg.seed}" if open_loop else "closed loop"
    out = [f"clipper-bench {cfg.target.url} ({cfg.target.protocol}, {loop}, {workers})"]

    headers = ["rate/s" if open_loop else "conc", "offered/s", "achieved/s"]
    headers += ["mean ms", "sd ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "p99.9 ms"]
    if open_loop:
        headers.append("lag p99 ms")
    headers += ["errors"]
    if cfg.slo_ms is not None:
        headers += [f"<={cfg.slo_ms:g}ms %", "goodput/s"]
    headers += ["default %", "cache %", "gen CPU", "stable"]
    rows = []
    for lvl in result.levels:
        lat = lvl.latency
        row = [
            f"{lvl.level:g}",
            _num(lvl.offered_rps, ".1f"),
            _num(lvl.achieved_rps, ".1f"),
            _ms(lat.mean),
            _ms(lat.sd),
            _ms(lat.p50),
            _ms(lat.p90),
            _ms(lat.p95),
            _ms(lat.p99),
            _ms(lat.p999),
        ]
        if open_loop:
            row.append(_ms(lvl.send_lag.p99 if lvl.send_lag else None))
        row.append(str(lvl.error_count))
        if cfg.slo_ms is not None:
            row += [_pct(lvl.slo_attainment), _num(lvl.goodput_rps, ".1f")]
        row += [
            _pct(lvl.default_share),
            _pct(lvl.cache_hit_share),
            f"{lvl.generator_cpu * 100:.0f}%" + ("!" if lvl.generator_saturated else ""),
            {True: "yes", False: "no", None: "-"}[lvl.stable],
        ]
        rows.append(row)
    out += _render(headers, rows)

    if any(lvl.server for lvl in result.levels):
        out.append("")
        out.append("server breakdown from /stats (mean per observation):")
        sh = ["level", "model", "queue us", "batch wait us", "rpc us", "compute us", "batch size"]
        srows = []
        for lvl in result.levels:
            if not lvl.server:
                continue
            models = lvl.server["models"] or {"-": lvl.server["total"]}
            for name, row in models.items():
                srows.append(
                    [
                        lvl.label,
                        name,
                        _num(row["queue_us"], ".0f"),
                        _num(row["batch_wait_us"], ".0f"),
                        _num(row["rpc_us"], ".0f"),
                        _num(row["compute_us"], ".0f"),
                        _num(row["batch_size"], ".2f"),
                    ]
                )
        out += ["  " + line for line in _render(sh, srows)]

    errs = [lvl for lvl in result.levels if lvl.errors]
    if errs:
        out.append("")
        out.append("errors by status:")
        for lvl in errs:
            detail = ", ".join(f"{k} x{v}" for k, v in lvl.errors.items())
            out.append(f"  {lvl.label}: {detail} (of {lvl.sent} sent)")

    notes = []
    if any(lvl.generator_saturated for lvl in result.levels):
        notes.append(
            "! a generator worker used >= 90% of a core: it may be the bottleneck; add --workers "
            "or run the generator on another machine"
        )
    behind = [lvl for lvl in result.levels if lvl.generator_behind]
    if behind:
        worst = max(lvl.send_lag.p99 for lvl in behind if lvl.send_lag and lvl.send_lag.p99)
        notes.append(
            f"! the generator sent late at {', '.join(lvl.label for lvl in behind)} (send lag p99 up to "
            f"{worst * 1e3:.1f} ms): short of CPU or of --max-inflight; the delay is counted in the latency"
        )
    if cfg.stop_rule == "stability" and any(lvl.stable is False for lvl in result.levels):
        notes.append(
            f"some levels did not stabilise within {cfg.max_windows} windows of {cfg.window:g} s "
            f"(throughput and p99 within {cfg.stability_pct:g}% over 3 windows)"
        )
    if notes:
        out.append("")
        out += notes
    return "\n".join(out) + "\n"


# -- JSON --------------------------------------------------------------------


def to_json_bytes(result: SweepResult) -> bytes:
    return _json.dumps_pretty(result.to_dict())


def write_json(result: SweepResult, path: str) -> None:
    with open(path, "wb") as fh:
        fh.write(to_json_bytes(result))


# -- CSV ---------------------------------------------------------------------


def _us(v: float | None) -> int:
    return 0 if v is None else round(v * 1e6)


def csv_rows(result: SweepResult) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the perf_analyzer-style CSV (see the module docstring)."""
    open_loop = result.config.mode == "open"
    header = ([REQUEST_RATE_COLUMN] if open_loop else []) + list(PERF_ANALYZER_COLUMNS)
    rows = []
    for lvl in result.levels:
        lat = lvl.latency
        total = lvl.server["total"] if lvl.server else {}
        queue_us = total.get("queue_us") or 0.0
        infer_us = total.get("compute_us") or 0.0
        mean_us = _us(lat.mean)
        network_us = max(0, mean_us - round(queue_us) - round(infer_us))
        row: list[Any] = [f"{lvl.level:g}"] if open_loop else []
        row += [
            0 if open_loop else int(lvl.level),
            round(lvl.achieved_rps, 3),
            0,
            network_us,
            round(queue_us),
            0,
            round(infer_us),
            0,
            0,
            _us(lat.p50),
            _us(lat.p90),
            _us(lat.p95),
            _us(lat.p99),
        ]
        rows.append(row)
    return header, rows


def write_csv(result: SweepResult, path_or_file: str | IO[str]) -> None:
    header, rows = csv_rows(result)
    if isinstance(path_or_file, str):
        with open(path_or_file, "w", newline="") as fh:
            _write_csv(fh, header, rows)
    else:
        _write_csv(path_or_file, header, rows)


def _write_csv(fh: IO[str], header: list[str], rows: list[list[Any]]) -> None:
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)


def csv_text(result: SweepResult) -> str:
    buf = io.StringIO()
    write_csv(result, buf)
    return buf.getvalue()


# -- plot --------------------------------------------------------------------


def plot_unavailable() -> str | None:
    """None when --plot can work, else the message to print."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib, which is not installed here (pip install matplotlib)"
    return None


def write_plot(result: SweepResult, path: str) -> None:
    """Latency (p50, p99) against achieved throughput, one point per level."""
    # The object API draws without pyplot's global state or a display backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    levels = [lvl for lvl in result.levels if lvl.latency.count]
    x = [lvl.achieved_rps for lvl in levels]
    for name, attr in (("p50", "p50"), ("p99", "p99")):
        ax.plot(x, [getattr(lvl.latency, attr) * 1e3 for lvl in levels], marker="o", label=name)
    for lvl in levels:
        ax.annotate(
            lvl.label, (lvl.achieved_rps, lvl.latency.p99 * 1e3), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    slo = result.config.slo_ms
    if slo is not None:
        ax.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
    ax.set_xlabel("achieved throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"clipper-bench {result.config.target.url}", fontsize=9)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    shares = [(lvl.achieved_rps, 100 * lvl.default_share) for lvl in levels if lvl.default_share is not None]
    if shares:  # the share answered with the app's default output, on its own axis
        ax2 = ax.twinx()
        (line,) = ax2.plot([p[0] for p in shares], [p[1] for p in shares], color="gray", linestyle=":",
                           marker="s", label="default %")
        ax2.set_ylabel("answered with the default (%)")
        ax2.set_ylim(0, 100)
        handles.append(line)
        labels.append("default %")
    ax.legend(handles, labels)
    fig.savefig(path, dpi=120)


# -- progress ----------------------------------------------------------------


class Progress:
    """One progress line on ``stream`` (stderr), rewritten in place on a terminal."""

    def __init__(self, stream: IO[str], enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._width = 0

    def _show(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
            self._width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def level_start(self, index: int, total: int, label: str) -> None:
        self._show(f"[{index + 1}/{total} {label}] warming up")

    def window(self, index: int, total: int, label: str, n: int, limit: int | None, stat: WindowStat) -> None:
        of = f"/{limit}" if limit else ""
        p99 = "-" if stat.p99 is None else f"{stat.p99 * 1e3:.2f} ms"
        self._show(f"[{index + 1}/{total} {label}] window {n}{of}: {stat.throughput:.1f} req/s, p99 {p99}")

    def level_done(self, result: LevelResult, total: int) -> None:
        p99 = _ms(result.latency.p99)
        self._show(
            f"[{result.index + 1}/{total} {result.label}] done: {result.achieved_rps:.1f} req/s, "
            f"p99 {p99} ms, {result.error_count} errors",
            final=True,
        )
