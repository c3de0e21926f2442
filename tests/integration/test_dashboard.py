"""The dashboard in a real browser (headless Chromium from Debian, driven through Selenium and
Debian's chromium-driver) against a real Clipper under load."""

import http.client
import itertools
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from clipper_core.admin import ClipperConnection
from clipper_core.testing import ClipperProcess, post_json, wait_for

CHROMIUM = os.environ.get("CLIPPER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CLIPPER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
# CLIPPER_DASHBOARD_SCREENSHOT=docs/dashboard.png renews the README's picture (the charts
# fill for CLIPPER_DASHBOARD_SHOT_WAIT_S first); the suite itself leaves the tree as it was
SCREENSHOT = os.environ.get("CLIPPER_DASHBOARD_SCREENSHOT")
TOKEN = "s3cret-dashboard-token"


def version_one(inputs):
    import time

    time.sleep(0.002)
    return [1.0 for _ in inputs]


def version_two(inputs):
    import time

    time.sleep(0.004 + 0.0002 * len(inputs))
    return [2.0 for _ in inputs]


def other_model(inputs):
    import time

    time.sleep(0.003)
    return [3.0 for _ in inputs]


def new_browser():
    """Headless Chromium through chromedriver; fails (never skips) with how to get them."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: `make build` installs the test extra "
                    "(pip install -e '.[test]')")
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{path} is missing: install Debian's {pkg} package (`make system-deps` "
                        "installs what .ci/system-packages.txt lists)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--force-device-scale-factor=1",
              "--hide-scrollbars"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = new_browser()
    yield d
    d.quit()


class Load:
    """Steady queries (distinct inputs, so that the models compute) and some feedback, from a
    few threads with keep-alive connections."""

    def __init__(self, query_url: str, apps: list[str], threads_per_app: int = 2,
                 pause_s: float = 0.004, label: float = 2.0) -> None:
        self.url = urllib.parse.urlsplit(query_url)
        self.apps = apps
        self.pause_s = pause_s
        self.label = label
        self.stop = threading.Event()
        self.counter = itertools.count()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(app,), daemon=True)
                        for app in apps for _ in range(threads_per_app)]

    def _run(self, app: str) -> None:
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set():
            i = next(self.counter)
            x = [float(i), float(i % 7)]
            try:
                conn.request("POST", f"/{app}/predict", json.dumps({"input": x}), headers)
                conn.getresponse().read()
                if i % 5 == 0:
                    conn.request("POST", f"/{app}/update",
                                 json.dumps({"input": x, "label": self.label}), headers)
                    conn.getresponse().read()
                self.sent += 1
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
            time.sleep(self.pause_s)
        conn.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def js(d, script, *args):
    return d.execute_script(script, *args)


def text_of(d, css):
    return js(d, "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
              css)


def visible(d, css):
    return js(d, "const e = document.querySelector(arguments[0]);"
                 "return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;", css)


def wait_page(d, cond, what, timeout_s=30.0):
    return wait_for(cond, timeout_s, what + f" (page status: {text_of(d, '#conn')!r}, "
                                           f"message: {text_of(d, '#token-message')!r})")


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def predict_value(c, app, i):
    code, body = c.predict(app, {"input": [1e6 + i, 0.5]})
    assert code == 200, body
    return body["output"]


def test_dashboard_under_load_with_token(browser, tmp_path):
    token_file = tmp_path / "mgmt-token"
    token_file.write_text(TOKEN)
    c = ClipperProcess(extra_args=("--mgmt-token-file", str(token_file))).start()
    try:
        conn = ClipperConnection(c.management_url, token=TOKEN)
        conn.register_application("shop", "doubles", -1.0, 30_000)
        conn.register_application("ranker", "doubles", -1.0, 50_000, policy="exp3")
        conn.deploy_python_closure("scorer", 1, "doubles", version_one)
        conn.deploy_python_closure("scorer", 2, "doubles", version_two, num_replicas=2)
        conn.deploy_python_closure("rival", 1, "doubles", other_model)
        conn.link_model_to_app("shop", "scorer")
        conn.link_model_to_app("ranker", "scorer")
        conn.link_model_to_app("ranker", "rival")
        assert predict_value(c, "shop", 0) == 2.0

        # the page and its assets need no token; the figures and the actions do
        base = c.management_url
        code, headers, body = get(base + "/")
        assert code == 200 and b'src="/dashboard/app.js"' in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert get(base + "/dashboard/charts.js")[0] == 200
        assert get(base + "/dashboard/events")[0] == 401
        assert get(base + "/dashboard/secret.txt")[0] == 401  # not an asset: the token rules
        assert get(base + "/admin/server_info")[0] == 401

        with Load(c.query_url, ["shop", "ranker"]) as load:
            d = browser
            d.get(base + "/")
            # no token yet: the page asks for one
            wait_page(d, lambda: visible(d, "#token-input"), "the token prompt")
            d.find_element("id", "token-input").send_keys("wrong-token")
            d.find_element("id", "token-submit").click()
            wait_page(d, lambda: "refused" in (text_of(d, "#token-message") or ""),
                      "a visible refusal of the wrong token")
            assert visible(d, "#token-message") and visible(d, "#token-input")
            assert "401" in text_of(d, "#token-message")
            assert text_of(d, "#conn") == "token needed"
            assert js(d, "return sessionStorage.length") == 0  # the wrong one is not kept

            d.find_element("id", "token-input").send_keys(TOKEN)
            d.find_element("id", "token-submit").click()
            wait_page(d, lambda: text_of(d, "#conn") == "live", "the page to go live")
            assert not visible(d, "#token-panel")
            assert js(d, "return Object.values(sessionStorage)") == [TOKEN]
            assert TOKEN not in d.current_url

            # the tables list the apps and the replicas
            wait_page(d, lambda: js(d, "return [...document.querySelectorAll("
                                       "'#apps-table tbody tr')].map(r => r.dataset.key)")
                      == ["ranker", "shop"], "both apps in the table")
            replicas = {r["instance_id"] for r in conn.get_all_model_replicas(verbose=True)}
            assert len(replicas) == 4
            wait_page(d, lambda: set(js(d, "return [...document.querySelectorAll("
                                           "'#replicas-table tbody tr')].map(r => r.dataset.key)"))
                      == replicas, "every replica in the table")
            assert text_of(d, '#models-table tr[data-key="scorer:2"] .badge') == "current"

            # the throughput chart moves, with queries answered
            rate_path = '[data-chart="app-rate:shop"] path[data-series="rate"]'
            wait_page(d, lambda: float(js(d, f"return document.querySelector('{rate_path}')"
                                             "?.dataset.last || 0")) > 0,
                      "a non-zero throughput")
            first = js(d, f"return document.querySelector('{rate_path}').getAttribute('d')")
            wait_page(d, lambda: js(d, f"return document.querySelector('{rate_path}')"
                                       ".getAttribute('d')") != first,
                      "the throughput chart to move")

            # p99 and the SLO line are drawn inside the latency chart
            lat = '[data-chart="app-latency:shop"]'
            wait_page(d, lambda: (js(d, f"return document.querySelector('{lat} "
                                        "path[data-series=\"p99\"]').getAttribute('d')") or ""
                                  ).count("L") >= 2, "a p99 line of several points")
            slo = js(d, f"const l = document.querySelector('{lat} line.slo');"
                        "return l && [l.x1.baseVal.value, l.x2.baseVal.value,"
                        " l.y1.baseVal.value, l.y2.baseVal.value];")
            assert slo is not None, "no SLO line"
            x1, x2, y1, y2 = slo
            assert x2 - x1 > 100 and y1 == y2 and 0 < y1 < 150, slo

            if SCREENSHOT:  # let the charts fill for a picture
                time.sleep(float(os.environ.get("CLIPPER_DASHBOARD_SHOT_WAIT_S", "12")))
                height = js(d, "return document.documentElement.scrollHeight")
                d.set_window_size(1400, min(int(height) + 140, 4000))
                time.sleep(1.2)  # one more frame at the new size
                assert d.save_screenshot(os.path.abspath(SCREENSHOT))
                d.set_window_size(1400, 1000)

            # a rollback clicked in the page changes what /predict answers
            d.find_element("css selector",
                           '#models-table tr[data-key="scorer:1"] button[data-action="set-version"]'
                           ).click()
            wait_page(d, lambda: (text_of(d, "#answer") or "").startswith("✓"),
                      "the rollback's answer")
            assert "scorer version 1" in text_of(d, "#answer")
            assert predict_value(c, "shop", 1) == 1.0
            assert conn.get_model_info("scorer")["model_version"] == "1"
            wait_page(d, lambda: text_of(d, '#models-table tr[data-key="scorer:1"] .badge')
                      == "current", "the page to mark version 1 current")

            # an action with a wrong token is refused, visibly, and nothing changes
            js(d, "sessionStorage.setItem('clipper.managementToken', 'stale-token')")
            d.find_element("css selector",
                           '#models-table tr[data-key="scorer:2"] button[data-action="set-version"]'
                           ).click()
            wait_page(d, lambda: "refused (401" in (text_of(d, "#answer") or ""),
                      "the refusal of the action")
            assert visible(d, "#answer") and visible(d, "#token-input")
            assert predict_value(c, "shop", 2) == 1.0
            assert load.sent > 100

            # the page watches while Clipper stops: the stream ends, Clipper does not wait on it
            t0 = time.monotonic()
            assert c.stop() == 0
            assert time.monotonic() - t0 < 15, "a page left open held up the shutdown"
    finally:
        c.close()


def test_dashboard_without_token_and_its_actions(browser, clipper, unique):
    conn = clipper.conn
    app, model = unique("plain"), unique("plainm")
    conn.register_application(app, "doubles", 0.0, 100_000)
    conn.deploy_python_closure(model, 1, "doubles", version_one)
    conn.link_model_to_app(app, model)
    d = browser
    d.get(clipper.management_url + "/")
    wait_page(d, lambda: text_of(d, "#conn") == "live", "the page to go live without a token")
    assert not visible(d, "#token-panel")
    assert js(d, "return sessionStorage.length") == 0
    wait_page(d, lambda: js(d, "return !!document.querySelector("
                               f"'#apps-table tr[data-key=\"{app}\"]')"), "the app's row")

    # scale from the page
    row = f'#models-table tr[data-key="{model}:1"]'
    box = d.find_element("css selector", row + ' input[type="number"]')
    box.clear()
    box.send_keys("2")
    d.find_element("css selector", row + ' button[data-action="scale"]').click()
    wait_page(d, lambda: (text_of(d, "#answer") or "").startswith("✓"), "the scale answer",
              timeout_s=60)
    assert "2 replica(s)" in text_of(d, "#answer")
    wait_for(lambda: len([r for r in conn.get_all_model_replicas(verbose=True)
                          if r["model_name"] == model and r["connected"]]) == 2,
             what="two connected replicas")

    # batching settings from the page
    js(d, "const s = document.getElementById('batching-model'); s.value = arguments[0];"
          "s.dispatchEvent(new Event('change'));", f"{model}:1")
    d.find_element("id", "batching-size").send_keys("8")
    d.find_element("id", "batching-wait").send_keys("1.5")
    d.find_element("id", "batching-apply").click()
    wait_page(d, lambda: "batch_size=8" in (text_of(d, "#answer") or ""),
              "the batching answer")
    b = conn.get_batching(model)["batching"]
    assert b["batch_size"] == 8 and b["batch_wait_ms"] == pytest.approx(1.5)
    wait_page(d, lambda: "maximum batch size 8" in (text_of(d, "#batching-now") or ""),
              "the page to show the new batching settings")

    # a refused action shows its reason
    box.clear()
    box.send_keys("999")
    d.find_element("css selector", row + ' button[data-action="scale"]').click()
    wait_page(d, lambda: "refused (400" in (text_of(d, "#answer") or ""),
              "the refusal of 999 replicas")
    assert "num_replicas" in text_of(d, "#answer")
    # ... and the errors-and-refusals list shows it too
    wait_page(d, lambda: "num_replicas" in (text_of(d, "#events-list") or ""),
              "the refusal in the list of the last errors and refusals")
