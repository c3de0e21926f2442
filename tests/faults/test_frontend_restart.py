"""A frontend killed with SIGKILL and started again on the same state directory serves again
without a redeploy; a broken state directory stops `clipper start` with a clear message."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from clipper_core.testing import (ClipperProcess, free_port, kill_replicas, process_alive,
                                  wait_for as _wait)


def plus_ten(inputs):
    return [float(x[0]) + 10 for x in inputs]









def _deploy(c, app="crash-app", model="crash", replicas=2):
    conn = c.conn
    conn.register_application(app, "doubles", -1.0, 1_000_000)
    conn.deploy_python_closure(model, 1, "doubles", plus_ten, num_replicas=replicas)
    conn.link_model_to_app(app, model)
    status, body = c.predict(app, {"input": [1.0]})
    assert status == 200 and body == {**body, "output": 11.0, "default": False}
    return {r["instance_id"]: r["pid"] for r in conn.get_all_model_replicas(verbose=True)}


def _serves_again(c, app="crash-app"):
    status, body = c.predict(app, {"input": [5.0]}, timeout_s=10)
    return status == 200 and body["default"] is False and body["output"] == 15.0


def test_sigkill_restart_readopts_replicas_and_serves_within_10s(tmp_path):
    state = str(tmp_path / "state")
    rpc = ("--rpc-port", str(free_port()))
    first = ClipperProcess(state, extra_args=rpc)
    first.start()
    second = None
    replicas = {}
    try:
        replicas = _deploy(first)
        assert len(replicas) == 2
        first.kill()
        # the replicas run in their own session: they survive the crash
        assert all(process_alive(pid) for pid in replicas.values())
        t0 = time.monotonic()
        second = ClipperProcess(state, extra_args=rpc)
        second.start()
        _wait(lambda: _serves_again(second), timeout_s=10.0,
              what="the app to answer after the restart")
        assert time.monotonic() - t0 <= 10.0
        conn = second.conn
        assert conn.get_all_apps() == ["crash-app"]
        assert conn.get_linked_models("crash-app") == ["crash"]
        info = conn.get_model_info("crash")
        assert info["is_current_version"] and info["num_replicas"] == 2
        # the survivors were re-adopted: the same processes, no duplicates
        _wait(lambda: len([r for r in conn.get_all_model_replicas(verbose=True)
                           if r["connected"]]) == 2, what="both replicas to reconnect")
        now = conn.get_all_model_replicas(verbose=True)
        assert {r["instance_id"]: r["pid"] for r in now} == replicas
        assert all(r["adopted"] and r["manager"] == "local" for r in now)
        assert "re-adopted replica" in second.log()
        # an adopted replica that dies is restarted like a child
        victim_iid, victim_pid = next(iter(replicas.items()))
        os.kill(victim_pid, signal.SIGKILL)
        _wait(lambda: [r for r in conn.get_all_model_replicas(verbose=True)
                       if r["instance_id"] == victim_iid and r["pid"] != victim_pid
                       and r["connected"]], what="the dead adopted replica's restart")
        assert _serves_again(second)
        survivors = {r["instance_id"]: r["pid"] for r in conn.get_all_model_replicas(verbose=True)}
        replicas.update(survivors)
        # a clean stop stops the adopted replicas too
        assert second.stop() == 0
        _wait(lambda: not any(process_alive(p) for p in survivors.values()),
              what="every replica to exit after a clean stop")
    finally:
        for c in (second, first):
            if c is not None:
                c.stop()
        kill_replicas(replicas)


def test_restart_on_another_rpc_port_readopts_local_replicas_through_their_socket(tmp_path):
    """Local replicas connect through <state dir>/rpc/replicas.ipc, which the next frontend
    binds again: they find it whatever its TCP port."""
    state = str(tmp_path / "state")
    first = ClipperProcess(state)  # RPC on a random TCP port
    first.start()
    second = None
    replicas = {}
    try:
        assert first.endpoints["rpc_local"] == f"ipc://{state}/rpc/replicas.ipc"
        replicas = _deploy(first, replicas=1)
        first.kill()
        second = ClipperProcess(state)
        second.start()
        assert second.endpoints["rpc"] != first.endpoints["rpc"]
        _wait(lambda: _serves_again(second), timeout_s=10.0, what="the app to answer")
        conn = second.conn
        _wait(lambda: [r for r in conn.get_all_model_replicas(verbose=True) if r["connected"]],
              what="the replica to reconnect")
        now = conn.get_all_model_replicas(verbose=True)
        assert {r["instance_id"]: r["pid"] for r in now} == replicas
        assert "re-adopted replica" in second.log()
    finally:
        for c in (second, first):
            if c is not None:
                c.close()
        kill_replicas(replicas)


def test_restart_on_another_rpc_port_replaces_the_survivors(tmp_path):
    # a state directory too deep for a Unix socket's path (107 bytes): the replicas connect
    # to the RPC's random TCP port, and survivors cannot find the next frontend
    state = str(tmp_path / ("state-" + "x" * 100))
    first = ClipperProcess(state)
    first.start()
    second = None
    replicas = {}
    try:
        assert "rpc_local" not in first.endpoints
        replicas = _deploy(first, replicas=1)
        first.kill()
        second = ClipperProcess(state)
        second.start()
        _wait(lambda: _serves_again(second), timeout_s=20.0, what="the app to answer")
        _wait(lambda: not any(process_alive(p) for p in replicas.values()),
              what="the stale survivor to be stopped")
        now = second.conn.get_all_model_replicas(verbose=True)
        assert len(now) == 1 and now[0]["pid"] not in replicas.values()
        assert "stopping replica" in second.log()
    finally:
        for c in (second, first):
            if c is not None:
                c.close()
        kill_replicas(replicas)


def _start_fails(state_dir, timeout_s=60):
    p = subprocess.run(
        [sys.executable, "-m", "clipper_core", "--state-dir", state_dir, "start",
         "--query-port", "0", "--mgmt-port", "0", "--rpc-port", "0"],
        capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return p.stderr


def test_corrupted_state_file_stops_start_with_a_clear_message(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not a database\n" * 200)
    err = _start_fails(str(state))
    assert "state.db is corrupted" in err
    assert "move" in err and "aside" in err and "--state-dir" in err  # how to recover
    assert not (state / "endpoints.json").exists()


def test_invalid_record_in_the_state_file(tmp_path):
    state = tmp_path / "state"
    with ClipperProcess(str(state)) as c:
        c.conn.register_application("fine-app", "doubles", 0.0, 100_000)
    db = sqlite3.connect(state / "state.db")
    db.execute("UPDATE apps SET data=? WHERE name='fine-app'",
               (json.dumps({"name": "fine-app", "input_type": "pictures",
                            "latency_slo_micros": 1}),))
    db.commit()
    db.close()
    err = _start_fails(str(state))
    assert "state.db is corrupted" in err and "input_type" in err and "move" in err
    db = sqlite3.connect(state / "state.db")
    db.execute("UPDATE apps SET data='{not json' WHERE name='fine-app'")
    db.commit()
    db.close()
    err = _start_fails(str(state))
    assert "not valid JSON" in err


@pytest.mark.parametrize("make", ["state_dir_is_a_file", "state_db_is_a_directory"])
def test_unusable_state_location(tmp_path, make):
    state = tmp_path / "state"
    if make == "state_dir_is_a_file":
        state.write_text("a file where the state directory should be")
        expected = "cannot use"
    else:
        (state / "state.db").mkdir(parents=True)
        expected = "is a directory"
    err = _start_fails(str(state))
    assert expected in err and "clipper:" in err


def test_a_zero_byte_state_file_after_a_run_is_refused(tmp_path):
    state = tmp_path / "state"
    with ClipperProcess(str(state)) as c:
        c.conn.register_application("kept-app", "doubles", 0.0, 100_000)
    # the WAL is checkpointed at a clean stop; truncate the database to 0 bytes
    for extra in ("state.db-wal", "state.db-shm"):
        if (state / extra).exists():
            (state / extra).unlink()
    (state / "state.db").write_bytes(b"")
    err = _start_fails(str(state))
    assert "state.db is empty (0 bytes)" in err and "aside" in err, err
    assert (state / "state.db").stat().st_size == 0, "the refused file was written to"
    # a fresh state directory with an empty file is simply a new state
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "state.db").write_bytes(b"")
    with ClipperProcess(str(fresh)) as c:
        assert c.conn.get_all_apps() == []
