"""What an open dashboard costs: the server's CPU with and without a page open, under the same
steady load, and the page's JavaScript heap over time.

    .venv/bin/python benchmarks/dashboard_cost.py [--rate 200] [--phase-s 30] [--rounds 3]
                                                  [--heap-s 180]

1. CPU: phases without and with a page open alternate (``--rounds`` of each, ``--phase-s``
   seconds each) while an open-loop load of ``--rate`` queries/s runs; for each phase the
   frontend process's CPU time (utime + stime from /proc/PID/stat) per second and per query.
   The same pairs run first on the idle server (``--idle-rounds``), where the few ms a second
   a page costs are not lost in the noise of the load; that difference, over the loaded
   server's CPU, is the page's share.
   The dashboard's own bookkeeping (CPU spent building and serialising frames, measured in the
   server with ``time.thread_time``) is read from the page.
2. Heap: one page stays open for ``--heap-s`` seconds under the same load; every 10 s the
   browser collects garbage and reports ``JSHeapUsedSize`` (Chrome DevTools Protocol).  The
   page is opened with ``?window=--window-s`` so that its chart series stop growing after
   that long and the rest of the run shows whether anything else grows.

Needs Debian's chromium and chromium-driver (see .ci/system-packages.txt) and selenium (the
test extra).  Prints a table and saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time

import aiohttp

from _load import cpu_seconds
from clipper_core.testing import ClipperProcess

HERE = os.path.dirname(os.path.abspath(__file__))


def small_model(inputs):
    import time

    time.sleep(0.001)
    return [float(len(x)) for x in inputs]


class OpenLoop(threading.Thread):
    """Queries at a fixed rate (distinct inputs, so that the model computes), from its own
    event loop; counts the answers."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.rate = url, rate
        self.answered = 0
        self.failed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        sem = asyncio.Semaphore(256)
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                try:
                    async with s.post(self.url, json={"input": [float(i), 1.0]}) as r:
                        await r.read()
                        self.answered += r.status == 200
                        self.failed += r.status != 200
                except aiohttp.ClientError:
                    self.failed += 1
                finally:
                    sem.release()

            loop = asyncio.get_running_loop()
            t0, i = loop.time(), 0
            while not self._halt.is_set():
                i += 1
                await asyncio.sleep(max(0.0, t0 + i / self.rate - loop.time()))
                await sem.acquire()
                asyncio.ensure_future(one(i))
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CLIPPER_TEST_CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(os.environ.get("CLIPPER_TEST_CHROMEDRIVER",
                                                        "/usr/bin/chromedriver")), options=opts)
    d.execute_cdp_cmd("Performance.enable", {})
    return d


def heap_bytes(d) -> int:
    d.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    metrics = d.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return int(next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize"))


def wait_live(d, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if d.execute_script("return document.getElementById('conn')?.textContent") == "live":
            return
        time.sleep(0.1)
    raise RuntimeError("the dashboard did not go live")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="queries/s (default 200)")
    ap.add_argument("--phase-s", type=float, default=30.0, help="seconds a phase (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="without/with pairs (default 3)")
    ap.add_argument("--idle-rounds", type=int, default=2,
                    help="without/with pairs before the load starts (default 2)")
    ap.add_argument("--heap-s", type=float, default=180.0,
                    help="seconds the page stays open for the heap (default 180)")
    ap.add_argument("--window-s", type=int, default=60,
                    help="the page's chart span (?window=), after which its series stop "
                         "growing (default 60)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "dashboard_cost.json"))
    args = ap.parse_args()

    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    c = ClipperProcess().start()
    d = None
    load = None
    try:
        conn = c.conn
        conn.register_application("dash", "doubles", -1.0, 50_000)
        conn.deploy_python_closure("small", 1, "doubles", small_model)
        conn.link_model_to_app("dash", "small")
        pid = c.endpoints["pid"]
        page = c.management_url + f"/?window={args.window_s}"
        d = browser()

        def run_phases(rounds: int, loaded: bool) -> list:
            out = []
            for r in range(rounds):
                for with_page in ((False, True) if r % 2 == 0 else (True, False)):
                    d.get(page if with_page else "about:blank")
                    if with_page:
                        wait_live(d)
                    n = load.answered if loaded else 0
                    a0, c0, t0 = n, cpu_seconds(pid), time.monotonic()
                    time.sleep(args.phase_s)
                    n = load.answered if loaded else 0
                    a1, c1, t1 = n, cpu_seconds(pid), time.monotonic()
                    out.append({"page": with_page, "loaded": loaded, "seconds": t1 - t0,
                                "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
                                "queries_per_s": (a1 - a0) / (t1 - t0),
                                "cpu_us_per_query": 1e6 * (c1 - c0) / max(1, a1 - a0)})
                    print(f"{'loaded' if loaded else 'idle'} round {r + 1} "
                          f"{'with' if with_page else 'without'} page: "
                          f"{out[-1]['cpu_pct']:.2f} % CPU, "
                          f"{out[-1]['queries_per_s']:.0f} q/s", flush=True)
            return out

        # without load the server does next to nothing, so what a page adds stands out
        idle = run_phases(args.idle_rounds, loaded=False)
        load = OpenLoop(f"{c.query_url}/dash/predict", args.rate)
        load.start()
        time.sleep(3)  # warm up
        phases = run_phases(args.rounds, loaded=True)

        d.get(page)
        wait_live(d)
        heap = []
        t0 = time.monotonic()
        while True:
            heap.append({"t": round(time.monotonic() - t0, 1), "js_heap_used": heap_bytes(d)})
            if time.monotonic() - t0 >= args.heap_s:
                break
            time.sleep(10)
        feed_cost = d.execute_script("return document.getElementById('feed-cost')?.textContent")
    finally:
        if load is not None:
            load.stop()
        if d is not None:
            d.quit()
        c.close()
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    def summary(with_page: bool, of: list | None = None) -> dict:
        ps = [p for p in (phases if of is None else of) if p["page"] == with_page]
        out = {}
        for k in ("cpu_pct", "cpu_us_per_query", "queries_per_s"):
            vals = [p[k] for p in ps]
            out[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        return out

    without, with_ = summary(False), summary(True)
    idle_without, idle_with = summary(False, idle), summary(True, idle)
    page_cost = idle_with["cpu_pct"]["median"] - idle_without["cpu_pct"]["median"]
    ratio = with_["cpu_us_per_query"]["median"] / without["cpu_us_per_query"]["median"]
    h = [x["js_heap_used"] for x in heap]
    # once the chart span has filled, the page holds as many points as it ever will
    full = [x["js_heap_used"] for x in heap if x["t"] >= args.window_s + 10] or h
    result = {
        "rate": args.rate, "phase_s": args.phase_s, "rounds": args.rounds,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "idle_without_page": idle_without, "idle_with_page": idle_with,
        "page_cost_pct_of_a_core": page_cost,
        "page_cost_share_of_loaded_server_cpu": page_cost / without["cpu_pct"]["median"],
        "without_page": without, "with_page": with_, "phases": idle + phases,
        "cpu_per_query_ratio_with_vs_without": ratio,
        "feed_cost": feed_cost, "heap": heap,
        "heap_first_last_max": [h[0], h[-1], max(h)],
        "heap_after_window_first_last_max": [full[0], full[-1], max(full)],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)

    def fmt(s: dict, k: str, unit: str) -> str:
        v = s[k]
        return f"{v['median']:.1f} {unit} ({v['min']:.1f}-{v['max']:.1f})"

    print(f"\nload average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print(f"{'':14}{'server CPU':>28}{'CPU per query':>30}{'queries/s':>24}")
    for name, s in (("without page", without), ("with page", with_)):
        print(f"{name:14}{fmt(s, 'cpu_pct', '%'):>28}{fmt(s, 'cpu_us_per_query', 'us'):>30}"
              f"{fmt(s, 'queries_per_s', ''):>24}")
    print(f"CPU per query, with / without a page: {ratio:.3f}")
    print(f"idle server: {idle_without['cpu_pct']['median']:.2f} % CPU without a page, "
          f"{idle_with['cpu_pct']['median']:.2f} % with one: a page costs {page_cost:.2f} % of "
          f"a core, {100 * page_cost / without['cpu_pct']['median']:.1f} % of the loaded "
          f"server's CPU")
    print(f"the server's own account: {feed_cost}")
    print(f"JS heap used over {args.heap_s:.0f} s (after GC): first {h[0] / 1e6:.2f} MB, "
          f"last {h[-1] / 1e6:.2f} MB, max {max(h) / 1e6:.2f} MB; once the {args.window_s} s "
          f"chart span had filled: first {full[0] / 1e6:.2f} MB, last {full[-1] / 1e6:.2f} MB, "
          f"max {max(full) / 1e6:.2f} MB")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
