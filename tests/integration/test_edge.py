"""The edge: a query's deadline starts when its first bytes arrive (or at its X-Request-Start),
and one that waited too long for the frontend is refused before its body is parsed, without
reaching the scheduler, counted as ``refused`` in /metrics: on ``/{app}/predict`` and on the
Open Inference Protocol's ``/v2/models/{name}/infer``."""

import json
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipper_core.edge import Edge, parse_request_start

SLO_US = 400_000  # the gate refuses a query that waited more than 300 ms (100 ms kept)


def http(clipper, path, body, *, headers=(), pause_after=None, pause_s=0.0):
    """POST ``body`` over a raw socket; with ``pause_after`` the first that many bytes go,
    then a pause, then the rest.  Returns (status, headers dict, body bytes)."""
    u = urlsplit(clipper.query_url)
    head = [f"POST {path} HTTP/1.1", f"Host: {u.hostname}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close", *headers]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        if pause_after is not None:
            s.sendall(raw[:pause_after])
            time.sleep(pause_s)
            raw = raw[pause_after:]
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head_b, _, payload = data.partition(b"\r\n\r\n")
    lines = head_b.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, payload


def figures(clipper, app, model):
    with urllib.request.urlopen(clipper.query_url + "/stats", timeout=30) as r:
        st = json.loads(r.read())
    with urllib.request.urlopen(clipper.query_url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    refused = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if (s.name == "clipper_queries_total" and s.labels.get("app") == app
                    and s.labels.get("outcome") == "refused"):
                refused = s.value
    return st["models"][f"{model}:1"]["queries"], refused


@pytest.fixture
def served(clipper, unique):
    app, nodefault, model = unique("edge"), unique("edge-nodef"), unique("edge-m")
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, SLO_US, cache_enabled=False)
    c.register_application(nodefault, "doubles", None, SLO_US, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", lambda xs: [float(x.sum()) for x in xs])
    c.link_model_to_app(app, model)
    c.link_model_to_app(nodefault, model)
    status, body = clipper.predict(app, {"input": [1.0, 2.0]})
    assert status == 200 and body["default"] is False, body
    return app, nodefault, model


def test_a_query_that_waited_past_its_budget_before_its_handler_is_refused(clipper, served):
    app, _, model = served
    admitted, refused = figures(clipper, app, model)
    body = b'{"input": [1.0, 2.0]}'
    # the first bytes arrive, the rest of the headers 0.5 s later: the handler cannot run
    # before then, but the deadline started with the first bytes
    status, _, payload = http(clipper, f"/{app}/predict", body, pause_after=20, pause_s=0.5)
    out = json.loads(payload)
    assert status == 200 and out["default"] is True and out["output"] == -1.0, out
    assert out["default_explanation"].startswith("refused: the query waited")
    assert isinstance(out["query_id"], int)
    assert figures(clipper, app, model) == (admitted, refused + 1), \
        "a refused query never reaches the scheduler, and it is counted"
    # the same request without the wait is answered by the model
    status, _, payload = http(clipper, f"/{app}/predict", body)
    assert status == 200 and json.loads(payload)["default"] is False
    assert figures(clipper, app, model) == (admitted + 1, refused + 1)


def test_the_refusal_path_does_not_parse_the_body(clipper, served):
    app, _, model = served
    broken = b'{"input": [1.0, oops'
    status, _, payload = http(clipper, f"/{app}/predict", broken)
    assert status == 400 and json.loads(payload)["error"] == "malformed_json"
    late = f"X-Request-Start: t={time.time() - 1.0:.3f}"  # a balancer saw it 1 s ago
    status, _, payload = http(clipper, f"/{app}/predict", broken, headers=[late])
    out = json.loads(payload)
    assert status == 200 and out["default"] is True, "refused before the JSON was looked at"
    assert out["default_explanation"].startswith("refused")


def test_without_a_default_or_for_a_batch_the_refusal_is_503_with_retry_after(clipper, served):
    app, nodefault, _ = served
    late = f"X-Request-Start: {int((time.time() - 1.0) * 1000)}"  # milliseconds since epoch
    status, hdrs, payload = http(clipper, f"/{nodefault}/predict", b'{"input": [1.0]}',
                                 headers=[late])
    assert status == 503 and hdrs["retry-after"] == "1"
    assert json.loads(payload)["error"] == "overloaded"
    status, hdrs, _ = http(clipper, f"/{app}/predict", b'{"input_batch": [[1.0], [2.0]]}',
                           headers=[late])
    assert status == 503 and "retry-after" in hdrs


def test_a_fresh_or_future_request_start_is_answered_normally(clipper, served):
    app, _, _ = served
    for t in (time.time(), time.time() + 30.0):
        status, _, payload = http(clipper, f"/{app}/predict", b'{"input": [1.0, 2.0]}',
                                  headers=[f"X-Request-Start: t={t:.3f}"])
        assert status == 200 and json.loads(payload)["default"] is False


def test_request_start_formats():
    assert parse_request_start("t=1700000000.5") == 1700000000.5
    assert parse_request_start("1700000000500") == pytest.approx(1700000000.5)
    assert parse_request_start("1700000000500000") == pytest.approx(1700000000.5)
    for bad in ("", "t=", "soon", "-5", "nan", "inf"):
        assert parse_request_start(bad) is None


def test_the_edge_bounds_the_wait_and_the_requests_held():
    g = Edge(wait_fraction=0.5, max_in_flight=2, headroom_cap_s=0.1)
    assert g.verdict(0.02, 0.0, 0.009) is None
    assert g.verdict(0.02, 0.0, 0.011).startswith("refused: the query waited")
    # a long SLO keeps at most 100 ms for the model: it may wait 1.9 s of 2 s
    assert g.verdict(2.0, 0.0, 1.5) is None
    assert g.verdict(2.0, 0.0, 1.95) is not None
    g.in_flight = 2  # the request being decided counts
    assert g.verdict(0.02, 0.0, 0.0) is None and g.verdict(None, 0.0, 0.0) is None
    g.in_flight = 3
    assert g.verdict(0.02, 0.0, 0.0).startswith("refused: the frontend holds 3")
    assert g.verdict(None, 0.0, 0.0).startswith("refused: the frontend holds 3")


def test_an_idle_keep_alive_connection_does_not_age_its_next_request(clipper, served):
    """The stamp belongs to a request's first bytes: body bytes that come after its
    handler started, or a pause between requests on one connection, never age the next."""
    import http.client

    app, _, _ = served
    u = urlsplit(clipper.query_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        for _ in range(3):
            # headers and body leave in separate writes
            conn.putrequest("POST", f"/{app}/predict")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", "21")
            conn.endheaders()
            time.sleep(0.05)
            conn.send(b'{"input": [1.0, 2.0]}')
            resp = conn.getresponse()
            out = json.loads(resp.read())
            assert resp.status == 200 and out["default"] is False, out
            time.sleep(0.5)  # idle for more than the 300 ms the gate allows
    finally:
        conn.close()


def test_the_rest_of_an_unread_body_does_not_age_the_next_request(clipper, served):
    """A 404 answers before the body is read; the body's last bytes arriving afterwards
    must not stamp the next request on the connection."""
    app, _, _ = served
    u = urlsplit(clipper.query_url)
    body = b'{"input": [' + b"1.0, " * 2000 + b'2.0]}'
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        head = (f"POST /no-such-app/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        s.sendall(head + body[:100])
        time.sleep(0.2)  # the 404 is decided; then the rest of the body
        s.sendall(body[100:])
        f = s.makefile("rb")
        status = int(f.readline().split()[1])
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        f.read(length)
        assert status == 404
        time.sleep(0.5)  # longer than the gate allows
        ok = b'{"input": [1.0, 2.0]}'
        s.sendall((f"POST /{app}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                   f"\r\nContent-Length: {len(ok)}\r\n\r\n").encode() + ok)
        status = int(f.readline().split()[1])
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        out = json.loads(f.read(length))
        assert status == 200 and out["default"] is False, out["default_explanation"]


OIP_BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2],
                                   "data": [1.0, 2.0]}]}).encode()


def test_an_oip_query_that_waited_past_its_budget_is_refused_before_the_scheduler(clipper,
                                                                                   served):
    app, _, model = served
    admitted, refused = figures(clipper, app, model)
    # the first bytes arrive, the rest 0.5 s later: more than the 300 ms the edge allows
    status, hdrs, payload = http(clipper, f"/v2/models/{app}/infer", OIP_BODY,
                                 pause_after=20, pause_s=0.5)
    out = json.loads(payload)
    assert status == 503 and hdrs["retry-after"] == "1", (status, out)
    assert out["code"] == "overloaded" and out["error"].startswith("refused: the query waited")
    assert figures(clipper, app, model) == (admitted, refused + 1), \
        "a refused query never reaches the scheduler, and it is counted"
    # the same request without the wait is answered by the model
    status, _, payload = http(clipper, f"/v2/models/{app}/infer", OIP_BODY)
    out = json.loads(payload)
    assert status == 200 and out["parameters"]["default"] is False, out
    assert out["outputs"][0]["data"] == [3.0]
    assert figures(clipper, app, model) == (admitted + 1, refused + 1)


def test_the_oip_refusal_path_does_not_parse_the_body(clipper, served):
    app, _, _ = served
    broken = b'{"inputs": [{"name": "input", oops'
    status, _, payload = http(clipper, f"/v2/models/{app}/infer", broken)
    assert status == 400 and json.loads(payload)["code"] == "malformed_json"
    late = f"X-Request-Start: t={time.time() - 1.0:.3f}"  # a balancer saw it 1 s ago
    for path in (f"/v2/models/{app}/infer", f"/v2/models/{app}/versions/1/infer"):
        status, hdrs, payload = http(clipper, path, broken, headers=[late])
        out = json.loads(payload)
        assert status == 503 and hdrs["retry-after"] == "1", (path, status, out)
        assert out["error"].startswith("refused"), out


def test_one_cap_on_the_requests_held_whatever_their_route(unique):
    """``--max-in-flight`` counts every request the query port holds: with one held (its
    body still on the way), a query is answered with its default output and any other
    request with 503 and Retry-After; the management port has its own edge."""
    from clipper_core.testing import ClipperProcess, wait_for

    with ClipperProcess(extra_args=("--max-in-flight", "1")) as c:
        app = unique("edge-cap")
        c.conn.register_application(app, "doubles", -1.0, SLO_US, cache_enabled=False)
        u = urlsplit(c.query_url)
        body = b'{"input": [1.0, 2.0]}'
        with socket.create_connection((u.hostname, u.port), timeout=30) as held:
            held.sendall((f"POST /{app}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                         + body[:5])

            def refused_metrics():
                status, hdrs, _ = _get(c.query_url + "/metrics")
                return status == 503 and hdrs.get("Retry-After") == "1"

            wait_for(refused_metrics, 10, "the held request to fill the edge")
            status, out = c.predict(app, {"input": [1.0]})
            assert status == 200 and out["default"] is True, out
            assert out["default_explanation"].startswith("refused: the frontend holds 2"), out
            assert c.conn.ping(), "the management port has its own edge"
            held.sendall(body[5:])
            reply = held.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200"), reply
        wait_for(lambda: _get(c.query_url + "/metrics")[0] == 200, 10, "the edge to free up")


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_an_overloaded_frontend_refuses_whole_queries_unread_and_recovers():
    """64 users in a closed loop against an app whose SLO is 2 ms (a 1 ms wait budget, so a
    0.25 ms lag target): the event loop lags far more than that, and part of the queries are
    answered with the default output before aiohttp reads them, counted as refused; every
    answer is well-formed JSON, and once the load stops a query is answered by the model."""
    import asyncio

    from clipper_core.testing import ClipperProcess, wait_for

    with ClipperProcess() as c:
        c.conn.register_application("hot", "doubles", -1.0, 2000, cache_enabled=False)
        c.conn.deploy_python_closure("hotm", 1, "doubles", lambda xs: [0.0 for _ in xs])
        c.conn.link_model_to_app("hot", "hotm")
        u = urlsplit(c.query_url)
        body = b'{"input": [1.0, 2.0]}'
        req = (f"POST /hot/predict HTTP/1.1\r\nHost: {u.hostname}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
        answers = []

        async def user(until):
            r, w = await asyncio.open_connection(u.hostname, u.port)
            try:
                while time.monotonic() < until:
                    w.write(req)  # one write: the request arrives whole
                    head = await r.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200"), head
                    n = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                             if line.lower().startswith(b"content-length:"))
                    answers.append(json.loads(await r.readexactly(n)))
            finally:
                w.close()

        async def load():
            until = time.monotonic() + 2.5
            await asyncio.gather(*(user(until) for _ in range(64)))

        asyncio.run(load())
        unread = [a for a in answers
                  if a["default"] and a["default_explanation"].startswith("refused unread")]
        assert unread, f"no unread refusal in {len(answers)} answers"
        assert all(a["output"] == -1.0 and isinstance(a["query_id"], int) for a in unread)
        assert all(set(a) >= {"query_id", "output", "default"} for a in answers)
        _, refused = figures(c, "hot", "hotm")
        assert refused >= len(unread), "unread refusals are counted as refused"
        # the share of queries let in grows back by LAG_RECOVERY_PER_S (5) a second: after
        # 0.3 s without load the next query is let in ...
        time.sleep(0.3)
        status, out = c.predict("hot", {"input": [1.0, 2.0]})
        assert status == 200 and not out.get("default_explanation", "").startswith(
            "refused unread"), out
        # ... and once the batch latency measured under the load is stale (1 s), the model
        # answers again
        wait_for(lambda: c.predict("hot", {"input": [1.0, 2.0]})[1]["default"] is False,
                 timeout_s=10, what="the model to answer after the load")
