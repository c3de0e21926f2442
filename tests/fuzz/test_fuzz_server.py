"""Hypothesis against a real server: no REST body is a 5xx, no RPC frame stops serving."""

import http.client
import json
from urllib.parse import urlsplit

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from clipper_core.testing import ClipperProcess
from clipper_rpc import protocol as P
from clipper_rpc.auth import Credentials

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)


def deep_values(depth):
    return st.builds(lambda leaf, n: json.loads("[" * n + json.dumps(leaf) + "]" * n),
                     scalars, st.integers(1, depth))


values = json_values | deep_values(1000)


def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


class Client:
    def __init__(self, url):
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path, body: bytes, ctype="application/json", extra=None):
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body=body,
                                  headers={"Content-Type": ctype, **(extra or {})})
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (http.client.HTTPException, ConnectionError):
                # the server may close a connection after a request it could not parse
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise


@pytest.fixture(scope="module")
def server():
    # a body that a Content-Encoding leaves incomplete waits for the body timeout (408)
    c = ClipperProcess(extra_args=("--body-timeout", "1"))
    c.start()
    conn = c.conn
    conn.register_application("fz", "doubles", -1.0, 1_000_000)
    conn.register_application("fzs", "strings", "d", 1_000_000)
    conn.register_application("fzi", "ints", 0, 1_000_000)
    conn.deploy_python_closure("fzm", 1, "doubles", add_one)
    conn.link_model_to_app("fz", "fzm")
    yield c
    c.close()


@pytest.fixture(scope="module")
def query(server):
    c = Client(server.query_url)
    yield c
    c.conn.close()


@pytest.fixture(scope="module")
def mgmt(server):
    c = Client(server.management_url)
    yield c
    c.conn.close()


field_names = st.sampled_from(["input", "input_batch", "uid", "timeout_ms", "version", "label"])


@FUZZ
@given(st.dictionaries(field_names, values, max_size=4), st.sampled_from(["fz", "fzs", "fzi"]),
       st.sampled_from(["predict", "update"]))
def test_query_bodies_are_never_5xx(server, query, body, app, route):
    status = query.post(f"/{app}/{route}", json.dumps(body).encode())
    assert status < 500, (status, body)


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]),
                       values, max_size=5),
       st.dictionaries(st.sampled_from(["id", "parameters", "outputs"]), values, max_size=2),
       st.sampled_from(["fz", "fzs", "fzi"]))
def test_oip_bodies_are_never_5xx(server, query, tensor, top, app):
    body = {"inputs": [tensor], **top}
    status = query.post(f"/v2/models/{app}/infer", json.dumps(body).encode())
    assert status < 500, (status, body)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["application/json", "text/plain"]))
def test_raw_bytes_are_never_5xx(server, query, raw, ctype):
    assert query.post("/fz/predict", raw, ctype) < 500


@settings(FUZZ, max_examples=20)
@given(st.binary(max_size=100), st.sampled_from(["gzip", "deflate", "br", "x"]))
def test_a_false_content_encoding_is_never_5xx(server, query, raw, encoding):
    assert query.post("/fz/predict", raw, extra={"Content-Encoding": encoding}) < 500


@FUZZ
@given(st.sampled_from(["add_app", "update_app", "add_model", "add_model_links",
                        "set_model_version", "set_num_replicas", "get_application",
                        "delete_versioned_model", "set_app_policy"]),
       st.dictionaries(st.sampled_from(["name", "input_type", "default_output",
                                        "latency_slo_micros", "policy", "policy_params",
                                        "model_name", "model_version", "app_name",
                                        "model_names", "num_replicas", "cache_ttl_s"]),
                       values, max_size=5))
def test_management_bodies_are_never_5xx(server, mgmt, route, body):
    status = mgmt.post(f"/admin/{route}", json.dumps(body).encode())
    assert status < 500, (status, route, body)


header_maps = st.dictionaries(st.sampled_from(["v", "t", "batch", "n", "model", "version",
                                               "input_type", "instance", "pid", "info",
                                               "error", "heartbeat_ms"]),
                              st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                              | st.text(max_size=10) | st.binary(max_size=10)
                              | st.lists(st.integers(0, 9), max_size=3), max_size=6)
frames = st.lists(st.one_of(st.binary(max_size=200),
                            header_maps.map(lambda h: msgpack.packb(h, use_bin_type=True))),
                  min_size=1, max_size=4)


def test_rpc_frames_never_stop_serving(server):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    Credentials.load(server.rpc_credentials).apply(sock)
    sock.connect(server.endpoints["rpc"])
    sent = []

    @settings(max_examples=1000, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames | st.sampled_from([P.encode(P.Heartbeat()),
                                     P.encode(P.Register("fzm", "1", "doubles", "fz-x", 1)),
                                     P.encode(P.Register("none", "1", "doubles", "fz-y", 1))])
           .map(lambda fs: [bytes(f) for f in fs]))
    def send(fs):
        sock.send_multipart(fs)
        sent.append(len(fs))
        while sock.poll(0):
            sock.recv_multipart()

    try:
        send()
    finally:
        sock.close()
    assert len(sent) >= 300
    status, body = server.predict("fz", {"input": [41.0]})
    assert status == 200 and body["output"] == 42.0 and not body["default"], body
    assert server.proc.poll() is None
