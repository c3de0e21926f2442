"""One frontend against two frontends behind a load balancer, same model and load, one run.

    .venv/bin/python benchmarks/frontends.py [--duration 10] [--connections 32] [--replicas 1]

Starts Debian's redis-server on a free port, two Clippers sharing their state in it
(``--state redis://...``, prediction cache off so that every query reaches the model), deploys
one closure model with one replica through the first (the deploying frontend starts it; it
serves both frontends, each batching on its own), and drives with wrk (a fresh input per
request) in turn:

- ``one``: the first frontend directly (the baseline);
- ``one_lb``: nginx with the first frontend alone upstream (what the load balancer costs);
- ``two_lb``: nginx with both frontends upstream;
- ``two_reuseport``: two more frontends of the cluster started with ``--reuse-port`` on one
  query port, the kernel as the load balancer (SO_REUSEPORT; issue 14's "several edge
  processes").

Prints queries/s and latency of each and the ratios to the baseline, with the core count and
load average beside them, and saves JSON in benchmarks/results/frontends.json.  Needs
redis-server, nginx and wrk (`make bench-deps`).  On a machine with fewer cores than
frontends + nginx + wrk + replicas, two frontends cannot beat one: read the ratio with the
core count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from _baselines import need, nginx_conf  # noqa: E402
from clipper_core.testing import (ClipperProcess, RedisServer, free_port, post_json,  # noqa: E402
                                  wait_for)

LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
                    '{"input": [1.0, 2.0, ' .. n .. '.0]}')
end
"""



def sum_model(inputs):
    return [float(x.sum()) for x in inputs]




def wrk(url: str, duration: float, connections: int, script: str) -> dict:
    out = subprocess.run([need("wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s",
                          "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    qps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    return {"qps": qps, "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errs.group(0) if errs else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=1,
                    help="replicas of the model (each serves both frontends)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="clipper-bench-frontends-")
    d = tmp.name
    redis_server = RedisServer().start()
    url = redis_server.url
    procs: list = []
    nginx = None
    try:
        shared = free_port()
        fe = [ClipperProcess(extra_args=("--state", url, "--cache-bytes", "0"))
              for _ in range(2)]
        fe += [ClipperProcess(extra_args=("--state", url, "--cache-bytes", "0",
                                          "--query-port", str(shared), "--reuse-port"))
               for _ in range(2)]
        for f in fe:
            procs.append(f.start())
        conn = fe[0].conn
        conn.register_application("bench", "doubles", -1.0, 100_000)
        conn.deploy_python_closure("sum", 1, "doubles", sum_model,
                                   num_replicas=args.replicas)
        conn.link_model_to_app("bench", "sum")
        for f in fe:  # (the last two share a query port: ask each on its management port)
            wait_for(lambda f=f: sum(r["connected"] for r in
                                     f.conn.get_all_model_replicas(verbose=True))
                     == args.replicas, 60, "every replica to serve every frontend")
            wait_for(lambda f=f: post_json(f"{f.query_url}/bench/predict",
                                           {"input": [1.0, 2.0]})[1].get("output") == 3.0,
                     60, "every frontend to answer")
        script = os.path.join(d, "post.lua")
        with open(script, "w") as fh:
            fh.write(LUA)

        def balancer(frontends: list) -> tuple:
            port = free_port()
            servers = " ".join(f"server {f.query_url.split('//')[1]};" for f in frontends)
            conf = os.path.join(d, f"nginx-{port}.conf")
            with open(conf, "w") as fh:
                fh.write(nginx_conf(d, port, 'proxy_pass http://clipper; proxy_http_version 1.1; '
                                    'proxy_set_header Connection "";',
                                    http=f"upstream clipper {{ {servers} keepalive 128; }}"))
            p = subprocess.Popen([need("nginx"), "-c", conf, "-p", d],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: _listening(port), 10, "nginx to listen")
            return p, f"http://127.0.0.1:{port}"

        results = {}
        results["one"] = wrk(f"{fe[0].query_url}/bench/predict", args.duration,
                             args.connections, script)
        for name, ups in (("one_lb", fe[:1]), ("two_lb", fe[:2])):
            nginx, lb = balancer(ups)
            results[name] = wrk(f"{lb}/bench/predict", args.duration, args.connections, script)
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
            nginx = None
        results["two_reuseport"] = wrk(f"{fe[2].query_url}/bench/predict", args.duration,
                                       args.connections, script)
    finally:
        if nginx is not None:
            nginx.kill()
        for f in procs:
            f.close()
        redis_server.close()
        tmp.cleanup()
    base = results["one"]["qps"]
    out = {"cpu_count": os.cpu_count(), "loadavg_before_after": os.getloadavg(),
           "duration_s": args.duration, "connections": args.connections,
           "replicas": args.replicas, "results": results,
           "ratio_to_one": {k: v["qps"] / base for k, v in results.items()}}
    for k, v in results.items():
        print(f"{k:13s} {v['qps']:8.0f} q/s  p50 {v['p50_ms']:.2f} ms  p99 {v['p99_ms']:.2f} ms  "
              f"x{v['qps'] / base:.2f} of one  non-2xx {v['non_2xx']}")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()}")
    path = os.path.join(os.path.dirname(__file__), "results", "frontends.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    main()
