"""Several frontends sharing their state in a real Redis server (Debian's redis-server, started
here on a random port with a temp dir and stopped by pid): a change made through one frontend
reaches the others, feedback teaches every frontend's policy, and a Redis outage fails
management calls clearly while queries go on."""

import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipper_core.admin import ClipperAdminError
from clipper_core.testing import ClipperProcess, wait_for
from redis_helper import RedisServer, free_port


@pytest.fixture(scope="module")
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def frontends(redis_server):
    fs = [ClipperProcess(extra_args=("--state", redis_server.url)) for _ in range(2)]
    try:
        for f in fs:
            f.start()
        yield fs
    finally:
        for f in fs:
            f.close()


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
    # b starts its own replica of the model it learnt of, then answers the same
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


def test_killing_one_frontend_leaves_the_other_serving_and_managing(redis_server):
    """Every frontend runs its own replicas of every model: when one dies (SIGKILL), the
    others keep serving with theirs, and take deployments on their own."""
    left = {}
    a = ClipperProcess(extra_args=("--state", redis_server.url)).start()
    b = ClipperProcess(extra_args=("--state", redis_server.url)).start()
    try:
        wait_for(lambda: answers(b, "shared", 1.0, 2.0), 60, "frontend b to answer")
        wait_for(lambda: answers(a, "shared", 1.0, 2.0), 60, "frontend a to answer")
        left = {r["instance_id"]: r["pid"] for r in a.conn.get_all_model_replicas(verbose=True)}
        a.kill()
        for _ in range(20):
            assert answers(b, "shared", 1.0, 2.0)
        b.conn.deploy_python_closure("adder", 3, "doubles", plus_one, num_replicas=1)
        b.conn.set_model_version("adder", 2)
        assert answers(b, "shared", 1.0, 3.0)
    finally:
        a.close()
        b.close()
        _kill_leftovers(left)


def _kill_leftovers(replicas):
    """Test hygiene: SIGKILL the replica processes the killed frontend left behind (only
    those that still carry the instance id we saw)."""
    for iid, pid in replicas.items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = f"CLIPPER_INSTANCE_ID={iid}".encode() in f.read().split(b"\0")
        except OSError:
            ours = False
        if ours:
            os.kill(pid, signal.SIGKILL)


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


def test_bad_state_url_is_a_clear_error():
    with tempfile.TemporaryDirectory() as d:
        assert "names no known state store" in _start_fails(d, "--state", "mysql://x")
        port = free_port()  # nothing listens there
        out = _start_fails(d, "--state", f"redis://127.0.0.1:{port}/0")
        assert "Redis state store" in out and "unreachable" in out
