"""No web page can drive the management API, and its token never reaches model code."""

import base64
import http.client
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

from clipper_core.admin import ClipperConnection, pickle_closure
from clipper_core.testing import ClipperProcess


def _request(url, method, path, body=b"", headers=None):
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": u.netloc, **(headers or {})}
        for k, v in hdrs.items():
            if v is not None:
                conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_a_cross_site_deploy_is_refused_and_its_code_never_runs(clipper, unique, tmp_path):
    marker = tmp_path / "pwned"
    path = str(marker)

    def payload(inputs, _path=path):  # would run at load time of a replica, and per batch
        open(_path, "w").write("ran")
        return [0.0 for _ in inputs]

    model = unique("evil")
    body = json.dumps({"model_name": model, "model_version": "1", "input_type": "doubles",
                       "closure": base64.b64encode(pickle_closure(payload)).decode(),
                       "warmup_input": [1.0]}).encode()
    url = clipper.management_url
    netloc = urlsplit(url).netloc
    attempts = [
        # the browser's cross-site "simple" request: text/plain, foreign Origin and Host
        {"Content-Type": "text/plain", "Origin": "http://evil.example",
         "Host": "evil.example"},
        # DNS rebinding: the page's own host name resolved to 127.0.0.1, same-origin to it
        {"Content-Type": "application/json", "Origin": f"http://evil.example:{urlsplit(url).port}",
         "Host": f"evil.example:{urlsplit(url).port}"},
        # a foreign page posting JSON with the right Host (a preflight is never granted)
        {"Content-Type": "application/json", "Origin": "http://evil.example",
         "Host": netloc},
        {"Content-Type": "application/json", "Origin": "null", "Host": netloc},
        # right Host, no Origin (an old browser's form post): not JSON, refused
        {"Content-Type": "text/plain", "Host": netloc},
        {"Content-Type": "application/x-www-form-urlencoded", "Host": netloc},
        {"Content-Type": None, "Host": netloc},
    ]
    for hdrs in attempts:
        status, answer = _request(url, "POST", "/admin/deploy_python_closure", body, hdrs)
        assert status in (403, 415), (hdrs, status, answer)
        assert json.loads(answer)["error"] in ("forbidden", "unsupported_media_type")
    assert f"{model}:1" not in clipper.conn.get_all_models()
    assert not marker.exists(), "the cross-site closure ran"
    # the same origin (the dashboard served from this port) and plain clients still work
    status, answer = _request(url, "GET", "/admin/ping", b"",
                              {"Origin": f"http://{netloc}"})
    assert status == 200, answer
    status, answer = _request(url, "POST", "/admin/get_all_models", b"{}",
                              {"Content-Type": "application/json; charset=utf-8",
                               "Origin": f"http://{netloc}"})
    assert status == 200, answer
    # control: the very same body, sent as a client would, deploys and its code runs
    status, answer = _request(url, "POST", "/admin/deploy_python_closure", body,
                              {"Content-Type": "application/json"})
    assert status == 200, answer
    assert marker.exists()


def test_token_from_environment_never_reaches_replicas_or_argv(unique, tmp_path):
    token = "s3cret-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPER_")}
    with ClipperProcess(extra_args=("--mgmt-token-file", str(token_file)), env=env) as c:
        anon = c.conn
        try:
            anon.get_all_apps()
            raise AssertionError("the management API answered without the token")
        except Exception as e:
            assert getattr(e, "status", None) == 401, e
        conn = ClipperConnection(c.management_url, token=token)
        app, model = unique("envapp"), unique("envleak")
        conn.register_application(app, "strings", "none", 1_000_000, cache_enabled=False)

        def show_env(inputs):
            import os as _os
            return [json.dumps({k: ("set" if k.endswith("SECRET_KEY") else v)
                                for k, v in _os.environ.items() if k.startswith("CLIPPER_")})
                    for _ in inputs]

        conn.deploy_python_closure(model, 1, "strings", show_env)
        conn.link_model_to_app(app, model)
        status, body = c.predict(app, {"input": "x"})
        assert status == 200 and not body["default"], body
        seen = json.loads(body["output"])
        assert token not in json.dumps(seen)
        assert "CLIPPER_MGMT_TOKEN" not in seen and "CLIPPER_MGMT_TOKEN_FILE" not in seen
        assert seen.get("CLIPPER_RPC_SECRET_KEY") == "set", seen
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert token not in ps, "the token shows in the process list"
    # --mgmt-token on the command line is refused with a pointer to the file option
    r = subprocess.run([sys.executable, "-m", "clipper_core", "--state-dir", str(tmp_path / "s"),
                        "start", "--mgmt-token", "x", "--query-port", "0", "--mgmt-port", "0",
                        "--rpc-port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--mgmt-token-file" in r.stderr, r.stderr


def test_the_management_body_limit(clipper):
    url = clipper.management_url
    status, answer = _request(url, "POST", "/admin/add_app", b"x" * (65 * 1024 * 1024),
                              {"Content-Type": "application/json"})
    assert status == 413, answer
