"""The edge's own reading of requests, on a virtual clock: which bytes are one whole request
(``whole_request``), the only ones it may answer without aiohttp (refused unread, or served
by the direct path); and the share of queries let in following the event loop's lag (AIMD on
the probes)."""

from hypothesis import given, settings, strategies as st

from clipper_core.edge import (LAG_BACKOFF, LAG_RECOVERY_PER_S, Edge, predict_target,
                               response_head, whole_request)


def request(path=b"/app/predict", body=b'{"input": [1.0]}', version=b"HTTP/1.1",
            headers=(), length=None, method=b"POST"):
    head = [method + b" " + path + b" " + version, b"Host: x", b"Content-Type: application/json",
            b"Content-Length: %d" % (len(body) if length is None else length), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def predict_of(data):
    """(app, close) of a whole /predict request; None for any other bytes."""
    req = whole_request(data)
    return None if req is None or req[0] is None else (req[0], req[1])


def test_a_whole_query_is_recognised():
    assert predict_of(request()) == ("app", False)
    assert predict_of(request(path=b"/app/predict/")) == ("app", False)  # the original's
    assert predict_of(request(path=b"/app/predict?x=1")) == ("app", False)
    assert predict_of(request(headers=[b"Connection: close"])) == ("app", True)
    assert predict_of(request(version=b"HTTP/1.0")) == ("app", True)
    assert predict_of(request(version=b"HTTP/1.0",
                              headers=[b"Connection: keep-alive"])) == ("app", False)
    assert predict_of(request(headers=[b"content-LENGTH : 16"], length=16)) is None, \
        "two Content-Length headers"
    whole = request(headers=[b"X-Request-Start: t=1700000000.5"])
    app, close, body_at, start = whole_request(whole)
    assert whole[body_at:] == b'{"input": [1.0]}' and start == b"t=1700000000.5"


def test_other_whole_requests_are_recognised_as_not_queries():
    for path in (b"/v2/models/m/infer", b"/app/update", b"/predict", b"//predict",
                 b"/a/b/predict"):
        req = whole_request(request(path=path))
        assert req is not None and req[0] is None, path
    get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    assert whole_request(get) == (None, False, len(get), None)
    assert predict_of(request(method=b"GET")) is None


def test_anything_else_is_not_one_whole_request():
    whole = request()
    assert whole_request(whole[:-1]) is None, "the body is still coming"
    assert whole_request(whole + whole) is None, "a pipelined request behind it"
    assert whole_request(whole[:whole.index(b"\r\n\r\n")]) is None, "headers not done"
    assert whole_request(request(headers=[b"Transfer-Encoding: chunked"])) is None
    assert whole_request(request(headers=[b"Expect: 100-continue"])) is None
    assert whole_request(request(headers=[b"Upgrade: websocket"])) is None
    assert whole_request(request(length=3)) is None
    assert whole_request(request(length=-1)) is None
    for odd in (b"+16", b"1_6", b"16 16", b"0x10", b""):
        assert whole_request(whole.replace(b"Content-Length: 16",
                                           b"Content-Length: " + odd)) is None, odd
    assert whole_request(request(headers=[b"no colon here"])) is None
    # framed as aiohttp frames it, or not at all: whitespace before a colon, a folded line
    assert whole_request(request(headers=[b"X-A : 1"])) is None
    assert whole_request(request(headers=[b"X-A: 1", b" folded: 2"])) is None
    assert whole_request(request(headers=[b"X-A:1", b"X-B:\t2 "])) is not None
    assert whole_request(whole.replace(b"Content-Length: 16", b"Content-Length: x")) is None
    assert whole_request(whole.replace(b"POST", b"BREW", 1)) is None
    assert whole_request(request(version=b"HTTP/2.0")) is None
    assert whole_request(request(path=b"/\xff/predict")) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_an_answer_or_none_never_an_error(data):
    out = whole_request(data)
    assert out is None or ((out[0] is None or isinstance(out[0], str))
                           and isinstance(out[1], bool) and 0 < out[2] <= len(data))


@settings(max_examples=200, deadline=None)
@given(app=st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=30),
       body=st.binary(max_size=200), cut=st.integers(0, 10_000))
def test_only_the_exact_whole_request_is_recognised(app, body, cut):
    whole = request(path=b"/" + app.encode() + b"/predict", body=body)
    assert predict_of(whole) == (app, False)
    assert whole[whole_request(whole)[2]:] == body
    part = whole[:cut % len(whole)]
    assert whole_request(part) is None


def test_a_direct_answer_is_well_formed_http():
    import email.parser
    head = response_head(503, 12, True, {"Retry-After": "1"})
    status, rest = head.split(b"\r\n", 1)
    assert status == b"HTTP/1.1 503 Service Unavailable" and head.endswith(b"\r\n\r\n")
    hdrs = email.parser.BytesHeaderParser().parsebytes(rest)
    assert hdrs["Content-Length"] == "12" and hdrs["Retry-After"] == "1"
    assert hdrs["Connection"] == "close" and hdrs["Content-Type"] == "application/json"
    assert hdrs["Date"].endswith("GMT")
    assert b"Connection" not in response_head(200, 0, False)
    # (heads without extra headers are kept for the second: each its own)
    for status, length, close in [(200, 7, True), (200, 7, False), (200, 8, False),
                                  (503, 7, False), (200, 7, True)]:
        hdrs = email.parser.BytesHeaderParser().parsebytes(
            response_head(status, length, close).split(b"\r\n", 1)[1])
        assert hdrs["Content-Length"] == str(length)
        assert (hdrs["Connection"] == "close") == close
        assert response_head(status, length, close).startswith(b"HTTP/1.1 %d " % status)


class Loop:
    """What the edge's probes use of an event loop: a clock and call_soon, run by hand."""

    def __init__(self):
        self.now = 100.0
        self.soon = []

    def time(self):
        return self.now

    def call_soon(self, cb, *args):
        self.soon.append((cb, args))

    def run_ready(self, after_s):
        """The ready queue runs ``after_s`` later (the loop's lag)."""
        self.now += after_s
        ready, self.soon = self.soon, []
        for cb, args in ready:
            cb(*args)


def edge(loop):
    e = Edge(app_lookup=lambda name: None, new_query_id=lambda: 1)
    e.loop = loop
    e.clock = loop.time
    return e


def test_the_share_let_in_backs_off_while_the_loop_lags_and_grows_back_after():
    loop = Loop()
    e = edge(loop)
    e.probe(loop.now)
    loop.run_ready(0.050)  # before any query: no target, nothing refused
    assert e.admit_share == 1.0
    e.note_slo(0.020, loop.now)  # a 20 ms SLO: a 10 ms wait budget, a 2.5 ms lag target
    assert e.lag_target_s == 0.0025
    for _ in range(10):
        loop.now += 0.001
        e.probe(loop.now)
        loop.run_ready(0.004)  # lags 4 ms
    assert abs(e.admit_share - LAG_BACKOFF ** 10) < 1e-9
    low = e.admit_share
    assert not loop.soon
    e.probe(loop.now)
    e.probe(loop.now)  # one probe at a time
    assert len(loop.soon) == 1
    loop.run_ready(0.0001)  # the lag is gone: the share grows back with time
    loop.now += 0.002
    e.probe(loop.now)
    loop.run_ready(0.0001)
    assert abs(e.admit_share - min(1.0, low + LAG_RECOVERY_PER_S * 0.0022)) < 1e-9
    loop.now += 1.0  # (an idle second counts too)
    e.probe(loop.now)
    loop.run_ready(0.0001)
    assert e.admit_share == 1.0


def test_after_the_load_stops_the_first_query_finds_the_share_grown_back():
    loop = Loop()
    e = edge(loop)
    e.note_slo(0.020, loop.now)
    for _ in range(30):  # the last probe before the pause still lagged
        loop.now += 0.001
        e.probe(loop.now)
        loop.run_ready(0.004)
    assert e.admit_share < 0.1
    loop.now += 0.5  # no query for half a second
    e.probe(loop.now)  # the next one's first bytes, before its own probe comes back
    assert e.admit_share == 1.0


def test_without_the_apps_the_edge_never_probes():
    loop = Loop()
    e = Edge()
    e.loop = loop
    e.note_slo(0.020, loop.now)
    e.probe(loop.now)
    assert not loop.soon and e.admit_share == 1.0


class App:
    name = "app"
    default_output = -1.0
    slo_micros = 20_000


class Written:
    """A transport that keeps what is written to it."""

    def __init__(self):
        self.out = []

    def write(self, data):
        self.out.append(bytes(data))

    def get_write_buffer_size(self):
        return 0

    def is_closing(self):
        return False


def test_a_refusal_tells_the_lag_the_latest_probe_found():
    """A refusal's body is kept between probes (only its query id changes), and made anew
    once a probe has measured the loop again: each tells the lag and share of its time."""
    from clipper_core.edge import EdgeConnection
    import json

    loop = Loop()
    ids = iter(range(1, 100))
    e = Edge(app_lookup=lambda name: App if name == "app" else None,
             new_query_id=lambda: next(ids))
    e.loop, e.clock = loop, loop.time
    e.note_slo(0.020, loop.now)
    conn = EdgeConnection(object(), e)
    conn.transport = Written()

    def refused_answers(lag_s, n):
        loop.run_ready(0.0)  # (a probe the last requests queued)
        loop.now += 0.002
        e.probe(loop.now)
        loop.run_ready(lag_s)
        e._credit = -10.0  # (none of these let in)
        for _ in range(n):
            conn.data_received(request())
        answers = []
        for raw in conn.transport.out[-n:]:
            head, _, body = raw.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert length == len(body)
            answers.append(json.loads(body))
        return answers

    first = refused_answers(0.004, 3)
    assert [a["query_id"] for a in first] == [1, 2, 3]
    assert all(a["default"] and a["output"] == -1.0 for a in first)
    assert len({a["default_explanation"] for a in first}) == 1
    assert "lags 4.0 ms" in first[0]["default_explanation"]
    later = refused_answers(0.009, 2)
    assert "lags 9.0 ms" in later[0]["default_explanation"]
    assert f"{100 * e.admit_share:.0f} % of queries let in" in later[1]["default_explanation"]


def line_by_line(data):
    """The reading ``whole_request`` replaced (a Python loop over the header lines), kept as
    the reference for well-formed requests: the two must agree on them.  (The target is
    read by the same ``predict_target``: only the reading of the lines changed.)"""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] not in {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE",
                                           b"OPTIONS", b"PATCH"} or parts[2] not in (
            b"HTTP/1.1", b"HTTP/1.0") or not parts[1]:
        return None
    length, close, start = -1, parts[2] == b"HTTP/1.0", None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip() != name or b" " in name or b"\t" in name:
            return None
        name = name.lower()
        if name == b"content-length":
            value = value.strip(b" \t")
            if length >= 0 or not value.isdigit():
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif name == b"connection":
            v = value.strip().lower()
            close = v == b"close" or (close and v != b"keep-alive")
        elif name == b"x-request-start":
            start = value.strip()
    if len(data) != end + 4 + (length if length > 0 else 0):
        return None
    app = None
    if parts[0] == b"POST" and length >= 0 and predict_target(parts[1]) is not None:
        try:
            app = predict_target(parts[1]).decode("ascii")
        except UnicodeDecodeError:
            return None
    return app, close, end + 4, start


_TOKEN = st.text("abcXYZ-_.!#0123", min_size=1, max_size=12).map(str.encode)
_VALUE = st.binary(max_size=20).filter(lambda v: b"\r" not in v and b"\n" not in v)
_HEADER = st.one_of(
    st.tuples(_TOKEN, _VALUE),
    st.tuples(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]),
              st.sampled_from([b" 16", b"16", b" 16 ", b"\t16", b" +16", b" 0", b" 3", b""])),
    st.tuples(st.sampled_from([b"Connection", b"connection"]),
              st.sampled_from([b" close", b" keep-alive", b" Close ", b" upgrade", b""])),
    st.tuples(st.sampled_from([b"X-Request-Start", b"x-request-start"]),
              st.sampled_from([b" t=1700000000.5", b"1700000000", b""])),
    st.tuples(st.sampled_from([b"Transfer-Encoding", b"Expect", b"Upgrade", b"Host"]),
              st.sampled_from([b" chunked", b" x"])))


@settings(max_examples=500, deadline=None)
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"BREW"]),
       path=st.sampled_from([b"/app/predict", b"/app/predict/", b"/a/b/predict", b"/predict",
                             b"/app/predict?x=1", b"/v2/models/m/infer", b"/\xff/predict"]),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]),
       headers=st.lists(_HEADER, max_size=6), body=st.sampled_from([b"", b'{"input": [1.0]}']),
       tail=st.sampled_from([b"", b"x", b"GET / HTTP/1.1\r\n\r\n"]))
def test_the_regular_expressions_read_well_formed_requests_as_the_line_loop_did(
        method, path, version, headers, body, tail):
    head = [method + b" " + path + b" " + version] + [n + b":" + v for n, v in headers]
    data = b"\r\n".join(head) + b"\r\n\r\n" + body + tail
    assert whole_request(data) == line_by_line(data)
