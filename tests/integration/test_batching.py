"""Batching end to end: a real Clipper, real model containers, real sockets, real load."""

import asyncio
import collections
import os
import signal
import time

import aiohttp
import pytest

from clipper_core.testing import wait_for as _wait

from clipper_core.admin import ClipperAdminError



def _connected(conn, model, n):
    _wait(lambda: conn.get_model_info(model)["connected_replicas"] >= n, 60,
          f"{n} replicas of {model} to connect")


async def _post(session, url, body, timeout_s=60.0):
    t0 = time.perf_counter()
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        data = await r.json()
        return r.status, data, time.perf_counter() - t0


def batch_length(inputs):
    import time

    time.sleep(0.5)
    return [len(inputs)] * len(inputs)


async def test_fixed_batch_of_9_fills_and_is_never_exceeded(clipper, unique):
    app, model = unique("nine-app"), unique("nine")
    c = clipper.conn
    c.register_application(app, "doubles", -1, 60_000_000, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", batch_length, num_replicas=5, batch_size=9)
    c.link_model_to_app(app, model)
    _connected(c, model, 5)
    url = f"{clipper.query_url}/{app}/predict"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        got = await asyncio.gather(*(_post(s, url, {"input": [float(i)]}) for i in range(450)))
    outputs = []
    for status, body, _ in got:
        assert status == 200 and body["default"] is False, body
        outputs.append(body["output"])
    counts = collections.Counter(outputs)
    assert max(outputs) <= 9, counts
    assert counts[9] >= 0.7 * 450, counts
    # only real queries: every batch of k answers k queries with k (padding would break it)
    assert all(n % k == 0 for k, n in counts.items()), counts
    stats = c.get_batching(model)
    assert stats["batching"]["batch_size"] == 9
    assert stats["stats"]["batch_size"]["sum"] == 450
    assert all(r["batch_size"] == 9 for r in stats["replicas"].values())


def linear_cost(inputs):
    import time

    time.sleep(0.001 + 0.00005 * len(inputs))
    return [float(x[0]) + 1 for x in inputs]


async def _closed_loop(url, concurrency, duration_s, make_body, on_answer):
    stop = time.monotonic() + duration_s

    async def worker(s, w):
        i = 0
        while time.monotonic() < stop:
            i += 1
            x = float(w * 100_000 + i)
            status, body, elapsed = await _post(s, url, make_body(x))
            on_answer(x, status, body, elapsed)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(worker(s, w) for w in range(concurrency)))


async def test_aimd_grows_the_batch_under_load_and_stays_in_budget(clipper, unique):
    app, model = unique("aimd-app"), unique("aimd")
    slo_s = 0.3
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, int(slo_s * 1e6), cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", linear_cost)
    c.link_model_to_app(app, model)
    answers = []
    await _closed_loop(f"{clipper.query_url}/{app}/predict", 32, 3.0,
                       lambda x: {"input": [x]}, lambda *a: answers.append(a))
    assert all(status == 200 for _, status, _, _ in answers)
    for x, _, body, _ in answers:
        if not body["default"]:
            assert body["output"] == x + 1
    assert sum(not b["default"] for _, _, b, _ in answers) >= 0.9 * len(answers)
    stats = c.get_batching(model, recent_batches=True)
    sizes = stats["stats"]["batch_size"]
    mean = sizes["sum"] / sizes["count"]
    assert mean >= 4, f"mean batch size {mean:.1f}: batching did not grow"
    lat = sorted(lat for _, lat in stats["recent_batches"])
    p99 = lat[int(0.99 * (len(lat) - 1))]
    budget = stats["budget_s"]
    assert budget == pytest.approx(0.5 * slo_s)
    assert p99 < budget, f"p99 batch latency {p99 * 1e3:.1f} ms over the budget"
    (rep,) = stats["replicas"].values()
    assert rep["batch_size"] > 1 and rep["aimd_increases"] > 0


def plus_one_slowly(inputs):
    import time

    time.sleep(0.01)
    return [float(x[0]) + 1 for x in inputs]


async def test_a_replica_killed_mid_stream_loses_no_query(clipper, unique):
    app, model = unique("survivor-app"), unique("survivor")
    slo_s, slack_s = 0.25, 0.15
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, int(slo_s * 1e6), cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", plus_one_slowly, num_replicas=2)
    c.link_model_to_app(app, model)
    _connected(c, model, 2)
    victim = next(r for r in c.get_all_model_replicas(verbose=True)
                  if r["model_name"] == model)
    answers = []
    loop = asyncio.get_running_loop()
    killed_at = []

    def kill():
        killed_at.append(time.monotonic())
        os.kill(victim["pid"], signal.SIGKILL)

    loop.call_later(1.0, kill)
    await _closed_loop(f"{clipper.query_url}/{app}/predict", 16, 3.0,
                       lambda x: {"input": [x]},
                       lambda *a: answers.append((time.monotonic(), *a)))
    assert killed_at, "the replica was not killed during the run"
    for _, x, status, body, elapsed in answers:
        assert status == 200, body
        assert body["default"] or body["output"] == x + 1
        assert elapsed <= slo_s + slack_s, f"an answer took {elapsed * 1e3:.0f} ms"
    after = [b for t, _, _, b, _ in answers if t > killed_at[0] + 0.5]
    assert after and sum(not b["default"] for b in after) >= 0.5 * len(after), \
        "the surviving replica kept serving"


def test_batching_changes_at_run_time_through_the_admin_client(clipper, unique):
    app, model = unique("knob-app"), unique("knob")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, 1_000_000, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", linear_cost)
    c.link_model_to_app(app, model)
    cfg = c.set_batching(model, batch_size=7, batch_wait_ms=1.5, max_in_flight=2,
                         aimd_step=3)
    assert cfg["batch_size"] == 7 and cfg["batch_wait_ms"] == pytest.approx(1.5)
    assert cfg["max_in_flight"] == 2 and cfg["aimd_step"] == 3
    stats = c.get_batching(model, 1)
    assert stats["batching"] == cfg
    assert stats["batch_wait_bound_s"] == pytest.approx(0.0015)
    assert all(r["batch_size"] == 7 for r in stats["replicas"].values())
    assert c.get_model_info(model)["batch_size"] == 7, "the batch size is stored"
    status, body = clipper.predict(app, {"input_batch": [[1.0]] * 20})
    assert status == 200
    assert {p["output"] for p in body["batch_predictions"]} == {2.0}
    sizes = c.get_batching(model)["stats"]["batch_size"]
    assert sizes["count"] >= 3, "20 queries in batches of at most 7"
    # back to AIMD with a derived wait; other settings stay
    cfg = c.set_batching(model, batch_size=-1, batch_wait_ms=None)
    assert cfg["batch_size"] == -1 and cfg["batch_wait_ms"] is None
    assert cfg["max_in_flight"] == 2
    for bad, needle in [({"batch_size": 0}, "batch_size"),
                        ({"aimd_backoff": 1.5}, "aimd_backoff"),
                        ({"max_in_flight": "2"}, "max_in_flight")]:
        with pytest.raises(ClipperAdminError) as e:
            c.set_batching(model, **bad)
        assert e.value.status == 400 and needle in e.value.cause
    with pytest.raises(ClipperAdminError) as e:
        c._call("set_batching", {"model_name": model, "batch_sise": 3})
    assert e.value.status == 400 and "batch_sise" in e.value.cause
    with pytest.raises(ClipperAdminError) as e:
        c.set_batching("no-such-model", batch_size=3)
    assert e.value.status == 404


def test_overload_is_shed_at_once_with_a_reason(clipper, unique):
    app, model = unique("shed-app"), unique("shed")
    c = clipper.conn
    c.register_application(app, "doubles", "busy", 300_000, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", batch_length)  # 0.5 s per batch
    c.link_model_to_app(app, model)
    c.set_batching(model, batch_size=1)
    # measure: one batch of one takes 0.5 s, longer than the 300 ms SLO
    status, body = clipper.predict(app, {"input": [1.0]}, timeout_s=10)
    assert body["default"] is True
    _wait(lambda: c.get_batching(model)["batches"] >= 1, 10, "the first batch to come back")
    t0 = time.perf_counter()
    status, body = clipper.predict(app, {"input_batch": [[1.0]] * 5})
    elapsed = time.perf_counter() - t0
    assert status == 200
    preds = body["batch_predictions"]
    assert all(p["default"] and p["output"] == "busy" for p in preds)
    assert all(p["default_explanation"].startswith("shed: deadline cannot be met")
               for p in preds), preds
    assert elapsed < 0.25, "shed queries are answered at once, not at the deadline"
    assert c.get_batching(model)["shed_late"] >= 5
    # an app without a default output answers a shed query 503, with the reason
    bare = unique("shed-bare")
    c.register_application(bare, "doubles", None, 300_000, cache_enabled=False)
    c.link_model_to_app(bare, model)
    status, body = clipper.predict(bare, {"input": [1.0]})
    assert status == 503 and body["error"] == "overloaded", body
    assert "shed: deadline cannot be met" in body["cause"]
