"""The supervisor survives a state store that fails (a full or read-only state directory):
it logs the failure and keeps restarting replicas, and stopping still works."""

import asyncio
import logging
import os
import signal
import sys

from clipper_core.config import ModelVersion
from clipper_core.containers import LocalBackend, Supervisor
from clipper_core.errors import StateStoreError


class FailingStore:
    """The state store's replica interface, every write failing as on a full disk."""

    def __init__(self):
        self.fail = True
        self.docs = {}

    def put_replica(self, instance_id, data):
        if self.fail:
            raise StateStoreError("state store failed: database or disk is full")
        self.docs[instance_id] = data

    def delete_replica(self, instance_id):
        if self.fail:
            raise StateStoreError("state store failed: database or disk is full")
        self.docs.pop(instance_id, None)

    def replicas(self):
        return list(self.docs.values())


SLEEPER = {"kind": "command", "argv": [sys.executable, "-c", "import time; time.sleep(600)"]}


async def _wait(cond, timeout_s=20.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_replicas_restart_while_the_store_fails(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="clipper")
    store = FailingStore()
    backend = LocalBackend("test-" + os.urandom(4).hex(), str(tmp_path / "logs"))
    sup = Supervisor(backend, "tcp://127.0.0.1:1", store=store, max_backoff_s=0.2)
    sup.start()
    mv = ModelVersion("m", "1", "doubles", -1, (), SLEEPER, 1, ())
    try:
        await sup.set_replicas(mv, 1)
        pids = [sup.containers()[0]["pid"]]
        for _ in range(3):  # the second kill is where the old supervisor had died
            os.kill(pids[-1], signal.SIGKILL)
            await _wait(lambda: sup.containers()[0]["pid"] not in pids
                        and sup.containers()[0]["state"] == "running")
            pids.append(sup.containers()[0]["pid"])
        assert sup.containers()[0]["restarts"] == 3
        assert sup.store_errors >= 4  # every start's record failed, and was logged
        assert "cannot record replica" in caplog.text
        assert "database or disk is full" in caplog.text
        # space is freed: the next restart is recorded again
        store.fail = False
        os.kill(pids[-1], signal.SIGKILL)
        await _wait(lambda: store.docs)
        assert list(store.docs) == [sup.containers()[0]["instance_id"]]
        store.fail = True
    finally:
        await sup.close()  # must not raise though forgetting the record fails
        await backend.close()
    assert sup.containers() == []
    assert "cannot forget replica" in caplog.text
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(
            ")")[1].split()[0] == "Z"
