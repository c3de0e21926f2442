"""clipper-bench reports: console table, JSON, perf_analyzer CSV, plot, progress, CLI."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from clipper_core.bench import cli
from clipper_core.bench.output import (
    PERF_ANALYZER_COLUMNS,
    Progress,
    csv_rows,
    format_table,
    plot_unavailable,
    to_json_bytes,
    write_csv,
    write_json,
    write_plot,
)
from clipper_core.bench.runner import BenchConfig, LevelResult, SweepResult
from clipper_core.bench.stats import LatencySummary, WindowStat, summarize
from clipper_core.bench.target import build_target
from clipper_core.bench.testing import FakeOptions, ThreadedFakeServer

pytestmark = pytest.mark.timeout(60)

SERVER = {
    "models": {
        "m:1": {
            "queue_us": 300.0,
            "batch_wait_us": 50.0,
            "rpc_us": 900.0,
            "compute_us": 700.0,
            "batch_size": 2.5,
            "batches": 40,
        }
    },
    "total": {
        "queue_us": 300.0,
        "batch_wait_us": 50.0,
        "rpc_us": 900.0,
        "compute_us": 700.0,
        "batch_size": 2.5,
        "batches": 40,
    },
}


def level(index, value, mode="closed", server=SERVER, errors=None):
    return LevelResult(
        index=index,
        mode=mode,
        level=value,
        duration=2.0,
        windows=[WindowStat(500.0, 0.004, 1000)] * 3,
        stable=True,
        sent=1000,
        ok=990,
        offered_rps=500.0,
        achieved_rps=495.0,
        latency=summarize([0.001, 0.002, 0.003, 0.004]),
        errors=errors if errors is not None else {"500": 7, "connection_error": 3},
        slo_ms=3.0,
        slo_attainment=0.75,
        default_share=0.125,
        cache_hit_share=0.5,
        send_lag=summarize([0.0001, 0.0002]) if mode == "open" else None,
        generator_cpu=0.35,
        generator_cpu_max_worker=0.35,
        workers=1,
        server=server,
    )


def sweep(mode="closed", levels=None, url="http://127.0.0.1:1337/myapp/predict"):
    values = (1.0, 8.0) if mode == "closed" else (100.0, 1000.0)
    cfg = BenchConfig(target=build_target(url), mode=mode, levels=values, slo_ms=3.0, duration=2.0, seed=11)
    levels = levels or [level(i, v, mode) for i, v in enumerate(values)]
    return SweepResult(config=cfg, levels=levels, started_at=1.0, finished_at=2.0)


def test_console_table():
    text = format_table(sweep())
    lines = text.splitlines()
    assert "closed loop" in lines[0] and "http://127.0.0.1:1337/myapp/predict" in lines[0]
    header = lines[1].split()
    for col in ("conc", "offered/s", "achieved/s", "p50", "p99", "p99.9", "errors", "default", "cache", "stable"):
        assert col in header
    row = lines[2].split()
    assert row[:3] == ["1", "500.0", "495.0"]
    assert "2.50" in row  # p50 of 1..4 ms
    assert "75.0" in row and "12.5" in row and "50.0" in row  # SLO, default, cache
    assert "35%" in row and "yes" in row
    assert "server breakdown" in text and "m:1" in text and "2.50" in text
    assert "c=8: 500 x7, connection_error x3 (of 1000 sent)" in text


def test_console_table_open_loop_and_saturation_warning():
    levels = [level(0, 100.0, "open"), level(1, 1000.0, "open")]
    levels[1].generator_cpu_max_worker = 0.97
    text = format_table(sweep("open", levels))
    assert "open loop, poisson arrivals, seed 11" in text
    assert "rate/s" in text and "lag p99 ms" in text
    assert "may be the bottleneck" in text
    assert "sent late" not in text  # 0.2 ms of send lag is on time
    levels[0].send_lag = summarize([0.001, 0.030])
    text = format_table(sweep("open", levels))
    assert "! the generator sent late at r=100/s (send lag p99 up to 29.7 ms)" in text
    assert json.loads(to_json_bytes(sweep("open", levels)))["levels"][0]["generator"]["behind_schedule"] is True


def test_json_report(tmp_path):
    path = tmp_path / "out.json"
    write_json(sweep(), str(path))
    doc = json.loads(path.read_text())
    assert doc["tool"] == "clipper-bench"
    assert doc["config"]["levels"] == [1.0, 8.0] and doc["config"]["seed"] == 11
    lvl = doc["levels"][1]
    assert lvl["concurrency"] == 8 and lvl["rate"] is None
    assert set(lvl["latency_ms"]) == {"mean", "sd", "min", "max", "p50", "p90", "p95", "p99", "p99.9"}
    assert lvl["latency_ms"]["p50"] == pytest.approx(2.5)
    assert lvl["errors"] == {"500": 7, "connection_error": 3}
    assert lvl["requests"] == {"sent": 1000, "ok": 990, "errors": 10}
    assert lvl["slo_attainment"] == 0.75 and lvl["default_share"] == 0.125 and lvl["cache_hit_share"] == 0.5
    assert lvl["generator"]["cpu_cores"] == 0.35 and lvl["generator"]["saturated"] is False
    assert lvl["server"]["models"]["m:1"]["queue_us"] == 300.0
    assert lvl["windows"][0] == {"throughput_rps": 500.0, "p99_ms": 4.0, "answers": 1000}
    assert json.loads(to_json_bytes(sweep()))["levels"][0]["stable"] is True


def test_json_report_of_an_empty_level_is_valid_json():
    lvl = level(0, 1.0, server=None)
    lvl.latency = LatencySummary(count=0)
    doc = json.loads(to_json_bytes(sweep(levels=[lvl, level(1, 8.0)])))
    assert doc["levels"][0]["latency_ms"]["p99"] is None


def test_csv_uses_perf_analyzer_columns_in_microseconds(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(sweep(), str(path))
    rows = list(csv.reader(path.read_text().splitlines()))
    assert tuple(rows[0]) == PERF_ANALYZER_COLUMNS
    rec = dict(zip(rows[0], rows[2]))
    assert rec["Concurrency"] == "8"
    assert float(rec["Inferences/Second"]) == 495.0
    assert rec["p50 latency"] == "2500" and rec["p99 latency"] == "3970"  # µs
    assert rec["Server Queue"] == "300" and rec["Server Compute Infer"] == "700"
    # the rest of the mean: 2500 - 300 - 700
    assert rec["Network+Server Send/Recv"] == "1500"
    for col in ("Client Send", "Server Compute Input", "Server Compute Output", "Client Recv"):
        assert rec[col] == "0"


def test_csv_without_breakdown_and_for_open_loop():
    levels = [level(0, 100.0, "open", server=None), level(1, 1000.0, "open", server=None)]
    header, rows = csv_rows(sweep("open", levels))
    assert header == ["Request Rate", *PERF_ANALYZER_COLUMNS]
    rec = dict(zip(header, rows[1]))
    assert rec["Request Rate"] == "1000" and rec["Concurrency"] == 0
    assert rec["Server Queue"] == 0 and rec["Server Compute Infer"] == 0
    assert rec["Network+Server Send/Recv"] == 2500  # all of the mean
    buf = io.StringIO()
    write_csv(sweep("open", levels), buf)
    assert buf.getvalue().splitlines()[0].startswith("Request Rate,Concurrency,Inferences/Second,")


def test_plot_needs_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert "matplotlib" in plot_unavailable()
    rc = cli.main(["--url", "http://127.0.0.1:9/app/predict", "--plot", str(tmp_path / "p.png"), "--quiet"])
    assert rc == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()  # it failed before sending anything


def test_plot_when_matplotlib_is_there(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.fail("matplotlib is missing: install the test extras (`make venv`, or "
                    "pip install -e '.[test]')")
    path = tmp_path / "p.png"
    write_plot(sweep(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_line():
    buf = io.StringIO()
    p = Progress(buf)
    p.level_start(0, 2, "c=8")
    p.window(0, 2, "c=8", 1, 5, WindowStat(1234.5, 0.0032))
    p.level_done(level(0, 8.0), 2)
    out = buf.getvalue().splitlines()
    assert out == [
        "[1/2 c=8] warming up",
        "[1/2 c=8] window 1/5: 1234.5 req/s, p99 3.20 ms",
        "[1/2 c=8] done: 495.0 req/s, p99 3.97 ms, 10 errors",
    ]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = Progress(tty)
    p.level_start(0, 1, "c=1")
    p.level_done(level(0, 1.0), 1)
    assert tty.getvalue() == ("\r[1/1 c=1] warming up" + "\r[1/1 c=1] done: 495.0 req/s, p99 3.97 ms, 10 errors\n")
    quiet = io.StringIO()
    Progress(quiet, enabled=False).level_start(0, 1, "c=1")
    assert quiet.getvalue() == ""


# -- the command line, end to end, against the fake server in a thread --------


def test_cli_end_to_end(tmp_path, capsys):
    opts = FakeOptions(delay=0.001, default_every=4, error_every=5)
    with ThreadedFakeServer(opts) as srv:
        rc = cli.main(
            [
                "--url", srv.url(), "--concurrency", "1,4", "--duration", "0.3", "--window", "0.1",
                "--warmup", "0.05", "--workers", "0", "--slo-ms", "1000",
                "--json", str(tmp_path / "o.json"), "--csv", str(tmp_path / "o.csv"),
            ]
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.splitlines()[1].split()[0] == "conc"
    assert "errors by status:" in out and "500 x" in out
    assert "server breakdown" in out
    assert "[2/2 c=4] done:" in err  # progress on stderr
    doc = json.loads((tmp_path / "o.json").read_text())
    assert [lvl["concurrency"] for lvl in doc["levels"]] == [1, 4]
    assert all(lvl["errors"]["500"] > 0 for lvl in doc["levels"])
    assert doc["levels"][0]["server"]["models"]["fake:1"]["compute_us"] == pytest.approx(1000.0)
    rows = list(csv.reader((tmp_path / "o.csv").read_text().splitlines()))
    assert tuple(rows[0]) == PERF_ANALYZER_COLUMNS and [r[0] for r in rows[1:]] == ["1", "4"]


def test_cli_open_loop_quiet(capsys):
    with ThreadedFakeServer() as srv:
        rc = cli.main(
            ["--url", srv.url("/v2/models/m/infer"), "--rate", "50", "--arrivals", "constant", "--requests", "10",
             "--warmup", "0", "--workers", "0", "--quiet", "--seed", "1"]
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0
    assert err == ""
    assert "(oip, open loop, constant arrivals, seed 1, in-process)" in out


def test_cli_fails_when_nothing_succeeds(capsys):
    with ThreadedFakeServer(FakeOptions(error_every=1)) as srv:
        rc = cli.main(["--url", srv.url(), "--requests", "5", "--warmup", "0", "--workers", "0", "--quiet"])
    assert rc == 1
    assert "no request got a successful answer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate values must be > 0"),
        (["--concurrency", "1", "--max-windows", "0"], "--max-windows"),
        (["--input", "[1,"], "--input must be JSON"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_cli_config_errors_exit_2(args, message, capsys):
    rc = cli.main(["--url", "http://127.0.0.1:9/app/predict", "--quiet", *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--url", "http://h/app/predict", "--duration", "1", "--requests", "5"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["--url", "http://h/app/predict", "--concurrency", "1,x"])
    assert exc.value.code == 2
    assert "comma-separated" in capsys.readouterr().err
