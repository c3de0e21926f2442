"""Whole queries answered by the edge without aiohttp (edge.py, "Whole queries"): the same
answers, errors and metrics as aiohttp's path, by the deadline, in request order on a
connection, and everything the direct path does not take still served by aiohttp.

Which path answered is told by the ``Server`` header: aiohttp writes one, the edge does not.
A body with any field besides ``input`` (here ``timeout_ms``, set far above the SLO so that it
changes nothing) takes aiohttp's path, the reference the direct answers are held to."""

import json
import socket
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

SLO_US = 2_000_000
FAR = 1_000_000  # a timeout_ms that changes nothing but the path


def _slow(xs):
    import time
    out = []
    for x in xs:
        time.sleep(float(x[0]))
        out.append(float(x.sum()))
    return out


@pytest.fixture
def apps(clipper, unique):
    app, nodefault, tight, model = (unique("direct"), unique("direct-nodef"),
                                    unique("direct-tight"), unique("direct-m"))
    c = clipper.conn
    c.register_application(app, "doubles", -1.0, SLO_US, cache_enabled=False)
    c.register_application(nodefault, "doubles", None, 100_000, cache_enabled=False)
    c.register_application(tight, "doubles", -1.0, 100_000, cache_enabled=False)
    c.deploy_python_closure(model, 1, "doubles", _slow)
    for a in (app, nodefault, tight):
        c.link_model_to_app(a, model)
    status, body = clipper.predict(app, {"input": [0.0, 2.0]})
    assert status == 200 and body["default"] is False, body
    return app, nodefault, tight


def request(clipper, app, body, *, close=False):
    u = urlsplit(clipper.query_url)
    raw = json.dumps(body).encode()
    head = [f"POST /{app}/predict HTTP/1.1", f"Host: {u.hostname}",
            "Content-Type: application/json", f"Content-Length: {len(raw)}"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


def read_answer(f):
    """(status, headers, JSON body) of the next answer on the socket file ``f``."""
    status = int(f.readline().split()[1])
    hdrs = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, json.loads(f.read(int(hdrs["content-length"])))


def connect(clipper):
    u = urlsplit(clipper.query_url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    return s, s.makefile("rb")


def ask(clipper, app, body, **kw):
    s, f = connect(clipper)
    with s, f:
        s.sendall(request(clipper, app, body, **kw))
        return read_answer(f)


def test_a_whole_query_is_answered_without_aiohttp_as_aiohttp_answers_it(clipper, apps):
    app, _, _ = apps
    d_status, d_hdrs, direct = ask(clipper, app, {"input": [0.0, 3.0]})
    a_status, a_hdrs, slow = ask(clipper, app, {"input": [0.0, 3.0], "timeout_ms": FAR})
    assert "server" not in d_hdrs and "aiohttp" in a_hdrs["server"], "the paths taken"
    assert d_status == a_status == 200
    assert direct["output"] == slow["output"] == 3.0 and direct["default"] is False
    assert set(direct) == set(slow) and direct["models"] == slow["models"]
    assert direct["query_id"] != slow["query_id"]
    assert d_hdrs["content-type"] == "application/json" and "date" in d_hdrs


def test_the_metrics_count_direct_answers(clipper, apps):
    app, _, _ = apps

    def predictions():
        with urllib.request.urlopen(clipper.query_url + "/stats", timeout=30) as r:
            return json.loads(r.read())["apps"][app]["prediction"]

    before = predictions()
    for _ in range(5):
        assert ask(clipper, app, {"input": [0.0, 1.0]})[2]["default"] is False
    assert predictions() == before + 5


def test_answers_keep_the_order_of_the_requests_on_a_connection(clipper, apps):
    app, _, _ = apps
    s, f = connect(clipper)
    with s, f:
        # the first is in flight on the direct path (its model takes 0.3 s) when the second
        # arrives: the second waits, and its answer comes second
        s.sendall(request(clipper, app, {"input": [0.3, 1.0]}))
        time.sleep(0.05)
        s.sendall(request(clipper, app, {"input": [0.0, 5.0]}))
        first, second = read_answer(f), read_answer(f)
        assert first[2]["output"] == 1.3 and second[2]["output"] == 5.0
        # two requests in one write (a pipelining client) go to aiohttp, in order too
        s.sendall(request(clipper, app, {"input": [0.2, 1.0]})
                  + request(clipper, app, {"input": [0.0, 7.0]}))
        a, b = read_answer(f), read_answer(f)
        assert a[2]["output"] == 1.2 and b[2]["output"] == 7.0
        assert "aiohttp" in a[1]["server"]
        # and the connection stays with aiohttp from then on (it may still hold requests)
        s.sendall(request(clipper, app, {"input": [0.0, 1.0]}))
        c = read_answer(f)
        assert c[2]["output"] == 1.0 and "aiohttp" in c[1]["server"]


def test_a_direct_query_its_model_cannot_answer_in_time_gets_the_default_on_time(clipper,
                                                                                  apps):
    _, nodefault, tight = apps
    slack_s = 0.1
    t0 = time.monotonic()
    status, hdrs, out = ask(clipper, tight, {"input": [0.5, 1.0]})
    took = time.monotonic() - t0
    assert "server" not in hdrs, "answered on the direct path"
    assert status == 200 and out["default"] is True and out["output"] == -1.0, out
    assert out["default_explanation"].startswith(("model", "no healthy replica")), out
    assert took < 0.1 + slack_s, f"answered after {took * 1e3:.0f} ms (SLO 100 ms)"
    # without a default output: the error aiohttp's path answers
    direct = ask(clipper, nodefault, {"input": [0.5, 1.0]})
    ref = ask(clipper, nodefault, {"input": [0.5, 1.0], "timeout_ms": FAR})
    assert "server" not in direct[1]
    assert direct[0] == ref[0] and direct[2]["error"] == ref[2]["error"], (direct, ref)
    assert direct[0] >= 500
    # and logged as aiohttp's path logs it: a server-side failure, once per query
    assert clipper.log().count(f"POST /{nodefault}/predict: ") >= 2


def test_connection_close_is_honoured(clipper, apps):
    app, _, _ = apps
    s, f = connect(clipper)
    with s, f:
        s.sendall(request(clipper, app, {"input": [0.0, 1.0]}, close=True))
        status, hdrs, out = read_answer(f)
        assert status == 200 and hdrs["connection"] == "close" and "server" not in hdrs
        assert f.read() == b"", "the server closed the connection"


def test_what_the_direct_path_declines_aiohttp_answers(clipper, apps):
    app, _, _ = apps
    status, hdrs, out = ask(clipper, app, {"input": "not numbers"})
    assert status == 400 and out["error"] == "invalid_input" and "aiohttp" in hdrs["server"]
    status, hdrs, out = ask(clipper, app, {"input_batch": [[0.0, 1.0], [0.0, 2.0]]})
    assert status == 200 and [p["output"] for p in out["batch_predictions"]] == [1.0, 2.0]
    deep = json.loads("[" * 500 + "1.0" + "]" * 500)  # within JSON's depth limit
    status, hdrs, out = ask(clipper, app, {"input": deep})
    assert status == 400 and out["error"] in ("invalid_input", "bad_request"), out
    s, f = connect(clipper)
    with s, f:
        s.sendall(request(clipper, app, {"input": [0.0, 1.0]}).replace(b"]}", b"]x"))
        status, hdrs, out = read_answer(f)
        assert status == 400 and out["error"] == "malformed_json"
