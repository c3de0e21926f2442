"""Hostile bodies are answered 4xx, never 5xx; limits hold against idle connections and huge
RPC frames; deleted and redeployed versions never answer from the past."""

import json
import os
import resource
import socket
import time

import pytest
import zmq

from clipper_core.admin import ClipperAdminError
from clipper_core.testing import ClipperProcess, post_json, wait_for
from clipper_rpc.auth import Credentials


def deep(n, leaf="1"):
    return "[" * n + leaf + "]" * n


def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    c = ClipperProcess(extra_args=("--body-timeout", "1", "--idle-timeout", "2"))
    c.start()
    conn = c.conn
    conn.register_application("hostile", "doubles", -1.0, 1_000_000)
    conn.deploy_python_closure("hostile-m", 1, "doubles", add_one)
    conn.link_model_to_app("hostile", "hostile-m")
    conn.register_application("hostile-s", "strings", "d", 1_000_000)
    yield c
    c.close()


def _raw(url, request: bytes, timeout=15.0) -> int:
    """Send raw bytes, return the HTTP status of the answer."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def _post(url, path, body: bytes, extra=b"", length=None):
    host = url.split("//")[1]
    n = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n").encode() + extra + b"\r\n" + body


HOSTILE_PREDICT = [
    '{"input": [1.0], "uid": %s}' % deep(1000),
    '{"input": [1.0], "timeout_ms": %s}' % deep(1000),
    '{"input": [1.0], "version": %s}' % deep(1000),
    '{"input": %s}' % deep(1000, "1.0"),
    '{"input_batch": [%s]}' % deep(1000, "1.0"),
    '{"input": [1.0, true]}',          # a boolean among numbers
    '{"input": [true]}',
    '{"input": [1.0], "uid": "%s"}' % ("u" * 100_000),
    deep(1100),                         # deeper than the JSON parser goes
]

HOSTILE_OIP = [
    {"inputs": [{"name": "x", "datatype": "FP64", "shape": json.loads(deep(500)),
                 "data": [1.0]}]},
    {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0],
                 "parameters": json.loads(deep(900))}]},
    {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
     "parameters": {"timeout": json.loads(deep(900))}},
    {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1.0, True]}]},
    {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
     "outputs": [{"name": json.loads(deep(900))}]},
    {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
     "id": json.loads(deep(900))},
]


def test_hostile_query_bodies_are_4xx(server):
    url = server.query_url
    for body in HOSTILE_PREDICT:
        status = _raw(url, _post(url, "/hostile/predict", body.encode()))
        assert 400 <= status < 500, (status, body[:80])
    for body in HOSTILE_OIP:
        status, answer = post_json(f"{url}/v2/models/hostile/infer", body)
        assert 400 <= status < 500, (status, answer)
    bytes_deep = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                              "data": json.loads(deep(900, '"a"'))}]}
    status, answer = post_json(f"{url}/v2/models/hostile-s/infer", bytes_deep)
    assert 400 <= status < 500, (status, answer)
    # a Content-Encoding the body does not have
    status = _raw(url, _post(url, "/hostile/predict", b'{"input": [1.0]}',
                             b"Content-Encoding: gzip\r\n"))
    assert status == 400
    # feedback with a label nested deep, and with malformed fields
    for body in ('{"input": [1.0], "label": %s}' % deep(1000),
                 '{"input": [1.0], "label": 1, "uid": %s}' % deep(1000),
                 '{"input": %s, "label": 1}' % deep(1000)):
        status = _raw(url, _post(url, "/hostile/update", body.encode()))
        assert 400 <= status < 500, (status, body[:60])
    # the server still answers
    status, body = server.predict("hostile", {"input": [41.0]})
    assert status == 200 and body["output"] == 42.0
    assert "unhandled error in" not in server.log()


def test_a_body_shorter_than_its_content_length_is_answered(server):
    url = server.query_url
    t0 = time.monotonic()
    status = _raw(url, _post(url, "/hostile/predict", b'{"input": [1.0]}', length=1000))
    assert status == 408
    assert time.monotonic() - t0 < 10  # --body-timeout 1, plus slack


def test_hostile_management_values_are_refused(server):
    conn = server.conn
    with pytest.raises(ClipperAdminError) as e:
        conn.register_application("deep-default", "doubles", json.loads(deep(300)), 100_000)
    assert e.value.status == 400
    with pytest.raises(ClipperAdminError) as e:
        conn.update_application("hostile", policy="no-such-policy")
    assert e.value.status == 400
    assert conn.get_app_info("hostile")["policy"] == "single"
    status, _ = post_json(f"{server.management_url}/admin/update_app",
                          {"name": "hostile", "default_output": json.loads(deep(300))})
    assert status == 400


def test_idle_connections_leave_queries_and_management_answering(unique):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with ClipperProcess(open_files=1024, extra_args=("--idle-timeout", "30")) as c:
        conn = c.conn
        app = unique("idle-app")
        conn.register_application(app, "doubles", -1.0, 1_000_000)
        conn.deploy_python_closure(unique("idle-m"), 1, "doubles", add_one)
        conn.link_model_to_app(app, conn.get_all_models()[0].split(":")[0])
        socks = []
        try:
            for url, n in ((c.query_url, 1000), (c.management_url, 200)):
                host, port = url.split("//")[1].split(":")
                for _ in range(n):
                    socks.append(socket.create_connection((host, int(port))))
            t0 = time.monotonic()
            status, body = c.predict(app, {"input": [1.0]}, timeout_s=10)
            assert status == 200 and body["output"] == 2.0, body
            assert conn.ping()
            assert time.monotonic() - t0 < 10
        finally:
            for s in socks:
                s.close()


def _rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def test_a_300_mb_rpc_frame_leaves_rss_flat(server):
    pid = server.endpoints["pid"]
    before = _rss_kb(pid)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    Credentials.load(server.rpc_credentials).apply(sock)
    sock.connect(server.endpoints["rpc"])
    try:
        big = bytearray(300 * 1024 * 1024)
        sock.send_multipart([b"\x80", big], copy=False)
        del big
        time.sleep(2.0)
        after = _rss_kb(pid)
    finally:
        sock.close()
    assert after - before < 50 * 1024, f"RSS grew by {(after - before) // 1024} MB"
    status, body = server.predict("hostile", {"input": [1.0]})
    assert status == 200 and body["output"] == 2.0


def test_a_redeployed_version_answers_with_its_new_code(server):
    conn = server.conn
    conn.register_application("redeploy", "doubles", -1.0, 1_000_000, cache_enabled=True)
    conn.deploy_python_closure("cx", 1, "doubles", lambda xs: [1.0 for _ in xs])
    conn.link_model_to_app("redeploy", "cx")
    assert server.predict("redeploy", {"input": [5.0]})[1]["output"] == 1.0
    conn.unlink_model_from_app("redeploy", "cx")
    conn.delete_versioned_model("cx", 1)
    conn.deploy_python_closure("cx", 1, "doubles", lambda xs: [2.0 for _ in xs])
    conn.link_model_to_app("redeploy", "cx")
    wait_for(lambda: server.predict("redeploy", {"input": [6.0]})[1]["default"] is False, 20,
             "the redeployed version")
    status, body = server.predict("redeploy", {"input": [5.0]})
    assert status == 200 and body["output"] == 2.0, f"answered from the old version: {body}"
