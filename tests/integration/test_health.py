"""OIP health: live while the process answers; an app is ready while each of its linked models
has a replica that answers; the server is ready while at least one app is (or none needs a
model)."""

import json
import time
import urllib.error
import urllib.request

import tritonclient.http as th


def status_of(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(cond, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def double(inputs):
    return [2 * float(x[0]) for x in inputs]


def test_ready_follows_the_replicas(fresh_clipper):
    c, base = fresh_clipper.conn, fresh_clipper.query_url
    client = th.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()  # nothing to wait for yet
    c.register_application("hp-app", "doubles", -1.0, 1_000_000)
    assert client.is_server_ready()  # an app without a model waits for nothing
    assert not client.is_model_ready("hp-app")  # ... but it cannot answer from a model
    c.deploy_python_closure("hp-model", 1, "doubles", double)
    c.link_model_to_app("hp-app", "hp-model")
    assert client.is_server_ready() and client.is_model_ready("hp-app")
    assert status_of(base + "/v2/health/ready") == (200, {"ready": True})

    c.set_num_replicas("hp-model", 0)
    wait_for(lambda: status_of(base + "/v2/health/ready")[0] == 503,
             what="the server to report not ready")
    code, body = status_of(base + "/v2/health/ready")
    assert "hp-model:1" in body["error"]
    code, body = status_of(base + "/v2/models/hp-app/ready")
    assert code == 503 and "hp-model:1" in body["error"]
    code, body = status_of(base + "/v2/models/hp-app/versions/1/ready")
    assert code == 503
    assert not client.is_server_ready() and not client.is_model_ready("hp-app")
    assert client.is_server_live()
    assert status_of(base + "/v2/health/live")[0] == 200

    c.set_num_replicas("hp-model", 1)
    wait_for(lambda: status_of(base + "/v2/health/ready")[0] == 200,
             what="the server to be ready again")
    assert status_of(base + "/v2/models/hp-app/ready")[0] == 200
    assert status_of(base + "/v2/models/hp-app/versions/1/ready")[0] == 200
    assert client.is_model_ready("hp-app", "1")
    assert fresh_clipper.predict("hp-app", {"input": [21.0]})[1]["output"] == 42.0

    # an app whose (external) model has no replica keeps only itself out: the server stays
    # ready for a load balancer, names the app, and that app's own readiness is strict
    c.register_application("hp-ext", "doubles", -1.0, 1_000_000)
    c.register_model("hp-ext-model", 1, "doubles")
    c.link_model_to_app("hp-ext", "hp-ext-model")
    code, body = status_of(base + "/v2/health/ready")
    assert code == 200 and body["ready"] is True
    assert list(body["not_ready"]) == ["hp-ext"]
    assert "hp-ext-model:1" in body["not_ready"]["hp-ext"]
    assert status_of(base + "/v2/models/hp-ext/ready")[0] == 503
    assert status_of(base + "/v2/models/hp-app/ready")[0] == 200
    assert client.is_server_ready() and not client.is_model_ready("hp-ext")

    # ... but a frontend where no app can answer from a model is not ready
    c.set_num_replicas("hp-model", 0)
    wait_for(lambda: status_of(base + "/v2/health/ready")[0] == 503,
             what="the server to report not ready")
    error = status_of(base + "/v2/health/ready")[1]["error"]
    assert "hp-model:1" in error and "hp-ext-model:1" in error
    client.close()
