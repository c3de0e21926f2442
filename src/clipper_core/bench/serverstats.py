"""Server-side latency breakdown from Clipper's ``GET /stats``.

The endpoint returns cumulative counters per model::

    {"models": {"<model>:<version>": {"queue_delay_s":   {"count": n, "sum": s},
                                      "batch_wait_s":    {...},
                                      "rpc_s":           {...},
                                      "model_compute_s": {...},
                                      "batch_size":      {"count": n, "sum": s}}}}

clipper-bench takes a snapshot when measurement starts and one when the level
has drained, and reports the mean of each counter over the difference. A target
without the endpoint (404, refused connection, anything that is not this shape)
simply has no breakdown.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from . import _json

__all__ = ["TIMINGS", "breakdown", "fetch_stats"]

#: Counter name in /stats -> key in the report (values in microseconds).
TIMINGS = {
    "queue_delay_s": "queue_us",
    "batch_wait_s": "batch_wait_us",
    "rpc_s": "rpc_us",
    "model_compute_s": "compute_us",
}
BATCH_SIZE = "batch_size"


async def fetch_stats(session: aiohttp.ClientSession, url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The parsed ``/stats`` document, or None when there is none to be had."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            body = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    try:
        doc = _json.loads(body)
    except _json.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        return None
    return doc


def _count_sum(entry: Any) -> tuple[float, float]:
    if not isinstance(entry, dict):
        return 0.0, 0.0
    try:
        return float(entry.get("count", 0) or 0), float(entry.get("sum", 0) or 0)
    except (TypeError, ValueError):
        return 0.0, 0.0


def breakdown(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per-model and overall means between two snapshots; None without both.

    Each row holds ``queue_us``, ``batch_wait_us``, ``rpc_us``, ``compute_us``
    (mean per observation, µs), ``batch_size`` (mean) and ``batches`` (how many
    batch-size observations); a mean is None when its counter did not move. The
    ``total`` row weights each model by its count.
    """
    if before is None or after is None:
        return None
    old_models = before.get("models", {})
    deltas: dict[str, dict[str, tuple[float, float]]] = {}
    for key, metrics in after["models"].items():
        if not isinstance(metrics, dict):
            continue
        old = old_models.get(key, {}) if isinstance(old_models, dict) else {}
        row: dict[str, tuple[float, float]] = {}
        for name in (*TIMINGS, BATCH_SIZE):
            c1, s1 = _count_sum(metrics.get(name))
            c0, s0 = _count_sum(old.get(name) if isinstance(old, dict) else None)
            row[name] = (c1 - c0, s1 - s0)
        if any(dc > 0 for dc, _ in row.values()):
            deltas[str(key)] = row

    def render(row: dict[str, tuple[float, float]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, label in TIMINGS.items():
            dc, ds = row.get(name, (0.0, 0.0))
            out[label] = ds / dc * 1e6 if dc > 0 else None
        dc, ds = row.get(BATCH_SIZE, (0.0, 0.0))
        out["batch_size"] = ds / dc if dc > 0 else None
        out["batches"] = int(dc)
        return out

    total: dict[str, tuple[float, float]] = {}
    for row in deltas.values():
        for name, (dc, ds) in row.items():
            c, s = total.get(name, (0.0, 0.0))
            total[name] = (c + dc, s + ds)
    return {"models": {k: render(v) for k, v in deltas.items()}, "total": render(total)}
