"""Several frontends sharing their state in a real Redis server (Debian's redis-server, started
here on a random port with a temp dir and stopped by pid): a change made through one frontend
reaches the others, feedback teaches every frontend's policy, a Redis outage fails
management calls clearly while queries go on, one frontend deploys (a lease) and the replicas
it starts serve every frontend, and another takes deployment over when it dies."""

import asyncio
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core.cluster import Cluster
from clipper_core.testing import (ClipperProcess, RedisServer, free_port, kill_replicas,
                                  wait_for)
from clipper_core.testing import frontends as running_frontends


@pytest.fixture(scope="module")
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def frontends(redis_server):
    with running_frontends(2, redis_server.url) as fs:
        yield fs


def plus_one(inputs):
    return [float(x[0]) + 1 for x in inputs]


def plus_two(inputs):
    return [float(x[0]) + 2 for x in inputs]


def half_sum(inputs):
    return [float(x.sum()) / 2 for x in inputs]


def double_sum(inputs):
    return [float(x.sum()) * 2 for x in inputs]


def answers(f, app, x, want):
    status, body = f.predict(app, {"input": [x]})
    return status == 200 and body.get("default") is False and body.get("output") == want


def test_app_registered_through_one_answers_through_the_others(frontends, redis_server):
    a, b = frontends
    a.conn.register_application("shared", "doubles", -1.0, 1_000_000)
    a.conn.deploy_python_closure("adder", 1, "doubles", plus_one, num_replicas=1)
    a.conn.link_model_to_app("shared", "adder")
    assert answers(a, "shared", 1.0, 2.0)
    # the replica the deployer started connects to b too, which then answers the same
    wait_for(lambda: answers(b, "shared", 1.0, 2.0), 60, "frontend b to answer app 'shared'")
    assert [r["model_name"] for r in b.conn.get_all_model_replicas(verbose=True)] == ["adder"]
    # a frontend started later loads everything
    with ClipperProcess(extra_args=("--state", redis_server.url)) as c:
        assert [x["name"] for x in c.conn.get_all_apps(verbose=True)] == ["shared"]
        wait_for(lambda: answers(c, "shared", 3.0, 4.0), 60, "late frontend c to answer")


def test_rollback_on_one_is_seen_by_the_other_within_a_second(frontends):
    a, b = frontends
    a.conn.deploy_python_closure("adder", 2, "doubles", plus_two, num_replicas=1)
    assert answers(a, "shared", 1.0, 3.0)
    wait_for(lambda: answers(b, "shared", 1.0, 3.0), 60, "frontend b to serve version 2")
    a.conn.set_model_version("adder", 1)
    t0 = time.monotonic()
    wait_for(lambda: answers(b, "shared", 1.0, 2.0), 5, "frontend b to serve version 1 again")
    took = time.monotonic() - t0
    assert took < 1.0, f"the rollback reached frontend b after {took:.2f} s"
    assert answers(a, "shared", 1.0, 2.0)


def test_feedback_through_one_changes_the_selection_on_the_other(frontends):
    a, b = frontends
    for name, fn in (("half", half_sum), ("double", double_sum)):
        a.conn.deploy_python_closure(name, 1, "doubles", fn, num_replicas=1)
    a.conn.register_application("mix", "doubles", -1.0, 1_000_000, policy="exp4",
                                policy_params={"loss": "squared", "loss_scale": 10.0,
                                               "eta": 1.0})
    a.conn.link_model_to_app("mix", "half")
    a.conn.link_model_to_app("mix", "double")
    wait_for(lambda: answers(b, "mix", 2.0, 2.5), 60, "frontend b to answer app 'mix'")
    # equal weights: (1 + 4) / 2
    w0 = b.conn.get_app_policy("mix")["models"]
    assert w0["half"]["weight"] == pytest.approx(0.5)
    for _ in range(15):  # the truth is the sum: half is off by 1, double by 2
        status, body = a.update("mix", {"input": [2.0], "label": 2.0})
        assert status == 200, body
    wa = a.conn.get_app_policy("mix")["models"]
    assert wa["half"]["weight"] > wa["double"]["weight"]

    def b_learnt():
        wb = b.conn.get_app_policy("mix")["models"]
        return wb["half"]["weight"] == pytest.approx(wa["half"]["weight"]) and wb
    wb = wait_for(b_learnt, 5, "frontend b's weights to follow a's feedback")
    assert wb["half"]["feedback"] == 15
    status, body = b.predict("mix", {"input": [2.0]})
    assert status == 200 and body["output"] < 2.5  # the weight moved towards half


def test_concurrent_feedback_through_two_frontends_adds_up(frontends):
    """Feedback sent to both frontends at once: each adds its change to the stored state
    (see selection.merge_state), so both end with all of it counted."""
    a, b = frontends
    before = a.conn.get_app_policy("mix")["feedback"]

    def send(f):
        for _ in range(10):
            status, body = f.update("mix", {"input": [2.0], "label": 2.0})
            assert status == 200, body
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(send, (a, b)))

    def settled():
        ia, ib = (f.conn.get_app_policy("mix") for f in (a, b))
        return (ia["feedback"] == ib["feedback"] == before + 20
                and ia["models"]["half"]["weight"] == pytest.approx(
                    ib["models"]["half"]["weight"]) and ia)
    info = wait_for(settled, 10, "both frontends to count all 20 feedbacks")
    assert info["models"]["half"]["feedback"] == before + 20


def test_redis_down_fails_management_calls_and_queries_go_on(frontends, redis_server):
    a, b = frontends
    redis_server.kill()
    try:
        with pytest.raises(ClipperAdminError) as e:
            a.conn.register_application("during-outage", "doubles", -1.0, 1_000_000)
        assert e.value.status == 503, e.value
        assert "Redis state store" in str(e.value) and "unreachable" in str(e.value)
        with pytest.raises(ClipperAdminError) as e:
            b.conn.set_model_version("adder", 2)
        assert e.value.status == 503, e.value
        for f in (a, b):  # queries go on with what each frontend holds
            for _ in range(20):
                assert answers(f, "shared", 5.0, 6.0)
        # the refused changes were not made anywhere
        assert "during-outage" not in [x["name"] for x in a.conn.get_all_apps(verbose=True)]
    finally:
        redis_server.start()
    # everything resumes: a change through one frontend reaches the other again
    wait_for(lambda: _try(lambda: a.conn.set_model_version("adder", 2)), 10,
             "management calls to succeed after Redis came back")
    wait_for(lambda: answers(b, "shared", 1.0, 3.0), 5, "frontend b to follow after the outage")
    a.conn.set_model_version("adder", 1)
    wait_for(lambda: answers(b, "shared", 1.0, 2.0), 2, "frontend b to follow the rollback")


def cluster(f):
    return f.conn.server_info()["cluster"]


def deployer_of(fs):
    """The frontend of ``fs`` that holds the deployer lease (exactly one)."""
    holders = [f for f in fs if cluster(f)["deployer"]]
    return len(holders) == 1 and holders[0]


def replica_processes(f, model=None, cluster_id=None):
    """pids of the live processes that are replicas of ``model`` (any version; None: of
    any model) in the cluster of frontend ``f`` (or ``cluster_id``), found by the
    environment Clipper gives them."""
    owner = f"CLIPPER_FRONTEND_ID={cluster_id or cluster(f)['cluster_id']}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if owner in env and (model is None
                             or f"CLIPPER_MODEL_NAME={model}".encode() in env):
            pids.append(int(name))
    return pids


def test_one_replica_serves_every_frontend(frontends):
    """The deployer starts the replica once; it connects to every frontend (the frontends
    tell it the cluster's RPC addresses), and each batches for it on its own."""
    a, b = frontends
    assert deployer_of(frontends)
    assert cluster(a)["cluster_id"] == cluster(b)["cluster_id"]
    assert len(cluster(a)["frontends"]) == 2
    seen = []
    for f in (a, b):
        reps = [r for r in f.conn.get_all_model_replicas(verbose=True)
                if r["model_name"] == "adder" and r["model_version"] == "1"]
        assert len(reps) == 1 and reps[0]["connected"], reps
        seen.append((reps[0]["instance_id"], reps[0]["pid"]))
        assert f.conn.get_model_info("adder", 1)["connected_replicas"] == 1
    assert seen[0] == seen[1]
    assert seen[0][1] in replica_processes(a, "adder")
    assert len(replica_processes(a, "adder")) == len(
        [m for m in a.conn.get_all_models(verbose=True) if m["model_name"] == "adder"])


def test_deploy_through_a_non_deployer_is_answered_by_all(frontends):
    a, b = frontends
    d = deployer_of(frontends)
    other = b if d is a else a
    other.conn.register_application("via-other", "doubles", -1.0, 1_000_000)
    # answered once the replica the deployer started has registered with `other`
    other.conn.deploy_python_closure("thrice", 1, "doubles", lambda xs: [3 * float(x[0])
                                                                          for x in xs],
                                     num_replicas=1)
    other.conn.link_model_to_app("via-other", "thrice")
    assert answers(other, "via-other", 2.0, 6.0)
    wait_for(lambda: answers(d, "via-other", 2.0, 6.0), 5, "the deployer to answer")
    assert len(replica_processes(a, "thrice")) == 1
    # scaling through the non-deployer answers once the new replica reached it
    other.conn.set_num_replicas("thrice", 2)
    assert other.conn.get_model_info("thrice", 1)["connected_replicas"] == 2
    assert len(replica_processes(a, "thrice")) == 2
    other.conn.set_num_replicas("thrice", 1)
    wait_for(lambda: len(replica_processes(a, "thrice")) == 1, 10,
             "the deployer to stop the second replica")
    # a deploy the deployer cannot carry out (an image, on the local backend) is answered
    # with a typed timeout naming the deployer, and changes nothing
    with pytest.raises(ClipperAdminError) as e:
        other.conn.deploy_image("boxed", 1, "doubles", "no-such-image:1", ready_timeout_s=1)
    assert e.value.status == 504 and e.value.code == "deployment_timeout", e.value
    assert f"the frontend {cluster(d)['frontend_id']} deploys" in str(e.value)
    for f in (a, b):
        assert "boxed:1" not in f.conn.get_all_models()


def test_killing_the_deployer_hands_deployment_over_and_no_query_fails(redis_server):
    """Three frontends; the deployer is SIGKILLed while queries go to the other two: none
    fails, another frontend takes the lease within a few seconds, re-adopts the running
    replica (same process), restarts it when it dies, and deploys what it is asked to."""
    url = redis_server.url[:-1] + "1"  # a cluster of its own: another Redis database
    fs = [ClipperProcess(extra_args=("--state", url, "--deployer-lease", "1.5"))
          for _ in range(3)]
    left = {}
    try:
        for f in fs:
            f.start()
        fs[0].conn.register_application("kept", "doubles", -1.0, 1_000_000)
        fs[0].conn.deploy_python_closure("keeper", 1, "doubles", plus_one, num_replicas=1)
        fs[0].conn.link_model_to_app("kept", "keeper")
        for f in fs:
            wait_for(lambda: answers(f, "kept", 1.0, 2.0), 10, "every frontend to answer")
        d = wait_for(lambda: deployer_of(fs), 5, "one deployer")
        cid = cluster(d)["cluster_id"]
        survivors = [f for f in fs if f is not d]
        (rep,) = d.conn.get_all_model_replicas(verbose=True)
        left = {rep["instance_id"]: rep["pid"]}

        failed, sent = [], [0]
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                f = survivors[i % 2]
                i += 1
                status, body = f.predict("kept", {"input": [float(i)]})
                sent[0] += 1
                if status != 200 or body.get("default") or body.get("output") != i + 1.0:
                    failed.append((status, body))
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(load)
            wait_for(lambda: sent[0] > 20, 10, "queries to flow")
            d.kill()
            t0 = time.monotonic()
            new = wait_for(lambda: deployer_of(survivors), 15,
                           "a surviving frontend to take the deployer lease")
            took = time.monotonic() - t0
            wait_for(lambda: [(r["instance_id"], r["pid"]) for r in
                              new.conn.get_all_model_replicas(verbose=True)
                              if r.get("state") == "running"] == [(rep["instance_id"],
                                                                    rep["pid"])],
                     10, "the new deployer to re-adopt the running replica")
            n0 = sent[0]
            wait_for(lambda: sent[0] > n0 + 20, 10, "queries to go on after the takeover")
            stop.set()
            run.result()
        assert not failed, f"{len(failed)} of {sent[0]} queries failed: {failed[:3]}"
        print(f"takeover after {took:.2f} s")
        assert took < 1.5 + 3, f"the takeover took {took:.1f} s"
        # the new deployer supervises: the replica it adopted is restarted when it dies
        os.kill(rep["pid"], signal.SIGKILL)
        wait_for(lambda: [r for r in new.conn.get_all_model_replicas(verbose=True)
                          if r.get("state") == "running" and r["pid"] != rep["pid"]],
                 20, "the new deployer to restart the replica")
        for f in survivors:
            wait_for(lambda: answers(f, "kept", 1.0, 2.0), 10, "answers after the restart")
        # it runs the closure from its own copy, read from Redis, whichever frontend the
        # closure was deployed through
        (now,) = new.conn.get_all_model_replicas(verbose=True)
        with open(f"/proc/{now['pid']}/cmdline", "rb") as cmd:
            assert new.state_dir.encode() in cmd.read()
        # and deploys: through the frontend that does not deploy
        other = next(f for f in survivors if f is not new)
        other.conn.deploy_python_closure("keeper", 2, "doubles", plus_two, num_replicas=1)
        for f in survivors:
            wait_for(lambda: answers(f, "kept", 1.0, 3.0), 5, "version 2 everywhere")
        left.update({r["instance_id"]: r["pid"]
                     for r in new.conn.get_all_model_replicas(verbose=True)})
        # the last frontend to stop stops the replicas (the first hands them to it)
        for f in survivors:
            f.stop()
        wait_for(lambda: not replica_processes(None, cluster_id=cid), 10,
                 "the last frontend to stop the replicas")
    finally:
        for f in fs:
            f.close()
        kill_replicas(left)




def _try(fn):
    try:
        fn()
        return True
    except ClipperAdminError:
        return False


def _start_fails(state_dir, *args):
    c = ClipperProcess(state_dir, extra_args=args, start_timeout_s=20)
    try:
        with pytest.raises(RuntimeError) as e:
            c.start()
        return str(e.value)
    finally:
        c.close()


def _model_queries(f, label):
    """Queries model ``label`` got on frontend ``f``, from its own management port's
    /metrics (JSON): the query port may be shared."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{f.management_url}/metrics",
                                 headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["models"].get(label, {}).get("queries", 0)


def test_frontends_of_a_cluster_share_one_query_port_with_reuse_port(redis_server):
    """--reuse-port: two frontends listen on one query port (SO_REUSEPORT) and the kernel
    spreads the connections over them; each answers with the model, and each one's own
    figures stay readable on its management port."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"  # a database of its own
    port = free_port()
    with running_frontends(2, url, ("--query-port", str(port), "--reuse-port")) as fs:
        assert [f.query_url for f in fs] == [f"http://127.0.0.1:{port}"] * 2
        a = fs[0]
        a.conn.register_application("rp", "doubles", -1.0, 1_000_000)
        a.conn.deploy_python_closure("rpm", 1, "doubles", plus_one)
        a.conn.link_model_to_app("rp", "rpm")
        for f in fs:
            wait_for(lambda f=f: any(r["connected"] for r in
                                     f.conn.get_all_model_replicas(verbose=True)),
                     60, "the replica to serve both frontends")
        n = 200
        for i in range(n):  # a connection each: urllib does not keep one alive
            assert answers(a, "rp", float(i), float(i) + 1)
        counts = [_model_queries(f, "rpm:1") for f in fs]
        assert sum(counts) == n and min(counts) > 0, counts
    # frontends with a state of their own must not share a port
    with tempfile.TemporaryDirectory() as d:
        assert "--state redis://" in _start_fails(d, "--reuse-port")


def test_bad_state_url_is_a_clear_error():
    with tempfile.TemporaryDirectory() as d:
        assert "names no known state store" in _start_fails(d, "--state", "mysql://x")
        port = free_port()  # nothing listens there
        out = _start_fails(d, "--state", f"redis://127.0.0.1:{port}/0")
        assert "Redis state store" in out and "unreachable" in out
        out = _start_fails(d, "--state", f"redis://127.0.0.1:{port}/0", "--deployer-lease", "0")
        assert "deployer_lease_s must be 0.3..300 seconds, got 0.0" in out


async def test_lease_has_one_holder_and_passes_on_when_it_falls_silent(redis_server):
    """Two cluster memberships in one process (a short lease): one holds the deployer lease,
    both see each other; when the holder stops renewing (as a killed frontend does) the
    other takes the lease after it expires, and a frontend leaving hands it over at once."""
    url = redis_server.url[:-1] + "2"
    roles = {"a": [], "b": [], "c": []}
    seen = {}

    def member(name):
        async def on_role(deployer):
            roles[name].append(deployer)
        return Cluster(url, name, lease_s=0.6, on_role=on_role,
                       on_frontends=lambda fs: seen.__setitem__(name, fs))
    a, b, c = member("a"), member("b"), member("c")
    await a.join({"rpc": "tcp://127.0.0.1:1"})
    await b.join({"rpc": "tcp://127.0.0.1:2"})
    try:
        await _until(lambda: roles["a"] == [True] and a.deployer and not b.deployer)
        assert b.deployer_id == "a" and "the frontend a deploys" in b.describe_deployer()
        await _until(lambda: seen.get("a") == seen.get("b") == ("tcp://127.0.0.1:1",
                                                                 "tcp://127.0.0.1:2"))
        # a falls silent without leaving (SIGKILL): b takes over once the lease expired
        await a.stop_renewing()
        t0 = time.monotonic()
        await _until(lambda: b.deployer, 3)
        assert 0.3 < time.monotonic() - t0 < 0.6 + 0.5
        assert roles["b"] == [True]
        await _until(lambda: seen.get("b") == ("tcp://127.0.0.1:2",), 3)  # a expired
        # a frontend that leaves hands the lease on at once
        await c.join({"rpc": "tcp://127.0.0.1:3"})
        assert not c.deployer
        assert await b.leave() == ["c"]
        await _until(lambda: c.deployer, 1)
    finally:
        for m in (a, b, c):
            await m.leave()


async def _until(cond, timeout_s=2.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
