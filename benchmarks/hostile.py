"""Hostile traffic against a real Clipper: N hostile REST requests and N random RPC frames.

    .venv/bin/python benchmarks/hostile.py [--rest 100000] [--rpc 100000] [--seed 1]

Starts its own Clipper (random ports, a temporary state directory), deploys a model, then

* sends ``--rest`` requests to the query and management ports, drawn at random from hostile
  shapes (deep nesting in every field, booleans among numbers, wrong types, truncated and
  random bytes, wrong Content-Encoding and Content-Type, foreign Origin/Host, huge strings),
  ``--concurrency`` at a time over keep-alive connections;
* sends ``--rpc`` random frames over the model RPC from an authenticated peer (random bytes,
  mutated valid messages, registrations of unknown and known models) and from an
  unauthenticated one;

and prints the status counts, the server's RSS before and after, and whether a valid query
still answers.  The run passes (exit 0) when no answer is a 5xx and the valid query answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import sys
import time

import aiohttp
import msgpack
import zmq

from clipper_core.testing import ClipperProcess
from clipper_rpc import protocol as P
from clipper_rpc.auth import Credentials


def deep(n: int, leaf: str = "1") -> str:
    return "[" * n + leaf + "]" * n


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def add_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


def hostile_rest(rng: random.Random, q: str, m: str) -> tuple[str, str, bytes, dict]:
    """(url, method, body, headers) of one hostile request."""
    j = {"Content-Type": "application/json"}
    d = rng.choice((10, 300, 1000, 1023))
    v = deep(d)
    choices = [
        (f"{q}/h/predict", '{"input": %s}' % deep(d, "1.0"), j),
        (f"{q}/h/predict", '{"input": [1.0], "uid": %s}' % v, j),
        (f"{q}/h/predict", '{"input": [1.0], "timeout_ms": %s}' % v, j),
        (f"{q}/h/predict", '{"input": [1.0], "version": %s}' % v, j),
        (f"{q}/h/predict", '{"input_batch": %s}' % v, j),
        (f"{q}/h/predict", '{"input": [1.0, true, %d]}' % rng.randint(-9, 9), j),
        (f"{q}/h/predict", '{"input": [%s]}' % rng.choice(("1e39", "-1e308", "1e400",
                                                            "99999999999999999999999")), j),
        (f"{q}/h/predict", '{"input": "%s"}' % ("x" * rng.randint(0, 100_000)), j),
        (f"{q}/h/predict", deep(rng.choice((1024, 1100, 5000))), j),
        (f"{q}/h/predict", '{"input": [1.0]}', {**j, "Content-Encoding": "gzip"}),
        (f"{q}/h/predict", '{"input": [1.0]}', {**j, "Content-Encoding": "br"}),
        (f"{q}/h/predict", '{"input": [1.0', j),
        (f"{q}/h/update", '{"input": [1.0], "label": %s}' % v, j),
        (f"{q}/h/update", '{"input": [1.0], "label": 1, "uid": %s}' % v, j),
        (f"{q}/no-such-app/predict", '{"input": [1.0]}', j),
        (f"{q}/v2/models/h/infer", json.dumps({"inputs": [{
            "name": "x", "datatype": "FP64", "shape": json.loads(deep(min(d, 500))),
            "data": [1.0]}]}), j),
        (f"{q}/v2/models/h/infer", json.dumps({"inputs": [{
            "name": "x", "datatype": "FP64", "shape": [1], "data": [1.0],
            "parameters": json.loads(deep(min(d, 900)))}]}), j),
        (f"{q}/v2/models/h/infer", json.dumps({"inputs": [{
            "name": "x", "datatype": rng.choice(("FP64", "INT32", "BYTES", "BOOL", "x")),
            "shape": [rng.randint(-2, 3), rng.randint(0, 3)],
            "data": [rng.choice((1, 1.5, True, "a", None))] * rng.randint(0, 6)}]}), j),
        (f"{q}/v2/models/h/infer", json.dumps({"inputs": [{
            "name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
            "id": json.loads(deep(min(d, 900)))}), j),
        (f"{m}/admin/add_app", json.dumps({"name": f"x{rng.randint(0, 9)}",
                                           "input_type": "doubles",
                                           "default_output": json.loads(deep(min(d, 900)))}),
         j),
        (f"{m}/admin/update_app", json.dumps({"name": "h", "policy": "nope"}), j),
        (f"{m}/admin/deploy_python_closure", '{"model_name": "evil"}',
         {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
        (f"{m}/admin/get_all_apps", "{}", {**j, "Origin": "null"}),
        (f"{m}/admin/add_model", json.dumps({"model_name": v[:200], "model_version": [],
                                             "input_type": {}}), j),
    ]
    url, body, hdrs = rng.choice(choices)
    raw = body.encode()
    if rng.random() < 0.1:  # flip bytes
        raw = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw = bytes(raw)
    return url, "POST", raw, hdrs


async def rest_phase(n: int, conc: int, seed: int, q: str, m: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    rng = random.Random(seed)
    reqs = iter([hostile_rest(rng, q, m) for _ in range(n)])
    conn = aiohttp.TCPConnector(limit=conc, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout,
                                     auto_decompress=False) as s:
        async def worker() -> None:
            for url, method, body, hdrs in reqs:
                try:
                    async with s.request(method, url, data=body, headers=hdrs) as r:
                        await r.read()
                        counts[r.status] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    counts[type(e).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
    return counts


def rpc_phase(n: int, seed: int, endpoint: str, creds: Credentials, model: str) -> dict:
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    auth = ctx.socket(zmq.DEALER)
    creds.apply(auth)
    anon = ctx.socket(zmq.DEALER)
    for s in (auth, anon):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.connect(endpoint)
    valid = [P.encode(P.Heartbeat()),
             P.encode(P.Register(model, "1", "doubles", "fuzz-%d" % rng.randint(0, 50), 1)),
             P.encode(P.Register("nope", "1", "doubles", "fuzz", 1)),
             P.encode(P.Result(rng.randint(0, 1 << 40), [1.0], 0)),
             P.encode(P.Error(rng.randint(0, 1 << 40), "E", "m", "tb"))]
    sent = collections.Counter()
    for i in range(n):
        r = rng.random()
        if r < 0.3:
            frames = [os.urandom(rng.randint(0, 200)) for _ in range(rng.randint(1, 4))]
        elif r < 0.6:
            frames = [bytes(f) for f in rng.choice(valid)]
            k = rng.randrange(len(frames))
            b = bytearray(frames[k])
            for _ in range(rng.randint(1, 3)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            frames[k] = bytes(b)
        elif r < 0.8:
            frames = [msgpack.packb({"v": rng.choice((1, 2, None)), "t": rng.randint(-1, 9),
                                     "batch": rng.choice((1, -1, "x", 2**64 - 1)),
                                     "n": rng.randint(-1, 5)}, use_bin_type=True)]
            frames += [os.urandom(rng.randint(0, 64)) for _ in range(rng.randint(0, 3))]
        else:
            frames = [bytes(f) for f in rng.choice(valid)]
        sock = anon if rng.random() < 0.1 else auth
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            sent["authenticated" if sock is auth else "unauthenticated"] += 1
        except zmq.Again:
            sent["dropped (peer not connected)"] += 1
        if i % 1000 == 0:  # drain what the frontend answers (RESET, REGISTERED, ...)
            while auth.poll(0):
                auth.recv_multipart()
    time.sleep(1.0)
    auth.close()
    anon.close()
    return dict(sent)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rest", type=int, default=100_000)
    ap.add_argument("--rpc", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    with ClipperProcess() as c:
        conn = c.conn
        conn.register_application("h", "doubles", -1.0, 1_000_000)
        conn.register_application("hs", "strings", "d", 1_000_000)
        conn.deploy_python_closure("hm", 1, "doubles", add_one)
        conn.link_model_to_app("h", "hm")
        pid = c.endpoints["pid"]
        ok0 = c.predict("h", {"input": [1.0]})
        rss0 = _rss_kb(pid)
        t0 = time.perf_counter()
        counts = asyncio.run(rest_phase(args.rest, args.concurrency, args.seed,
                                        c.query_url, c.management_url))
        t_rest = time.perf_counter() - t0
        rss1 = _rss_kb(pid)
        t0 = time.perf_counter()
        rpc = rpc_phase(args.rpc, args.seed, c.endpoints["rpc"],
                        Credentials.load(c.rpc_credentials), "hm")
        t_rpc = time.perf_counter() - t0
        rss2 = _rss_kb(pid)
        status, body = c.predict("h", {"input": [41.0]}, timeout_s=30)
        answers = status == 200 and body.get("output") == 42.0 and not body.get("default")
        alive = c.proc.poll() is None
        log_lines = c.log().count("\n")
    fivexx = sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)
    res = {"rest_requests": args.rest, "rest_seconds": round(t_rest, 1),
           "rest_status_counts": {str(k): v for k, v in sorted(counts.items(), key=str)},
           "rest_5xx": fivexx, "rpc_frames": rpc, "rpc_seconds": round(t_rpc, 1),
           "rss_kb_before": rss0, "rss_kb_after_rest": rss1, "rss_kb_after_rpc": rss2,
           "valid_query_before": ok0[0] == 200, "valid_query_after": answers,
           "server_alive": alive, "load": os.getloadavg()}
    print(f"REST: {args.rest} hostile requests in {t_rest:.1f} s")
    for k, v in sorted(counts.items(), key=str):
        print(f"  {k}: {v}")
    print(f"  5xx: {fivexx}")
    print(f"RPC: {sum(rpc.values())} frames in {t_rpc:.1f} s: {rpc}")
    print(f"RSS: {rss0 / 1024:.1f} MB before, {rss1 / 1024:.1f} MB after REST, "
          f"{rss2 / 1024:.1f} MB after RPC")
    print(f"valid query answers afterwards: {answers}; server alive: {alive}")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if (fivexx == 0 and answers and alive) else 1


if __name__ == "__main__":
    sys.exit(main())
