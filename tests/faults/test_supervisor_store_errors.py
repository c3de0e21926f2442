"""The supervisor survives a state store that fails (a full or read-only state directory):
it logs the failure and keeps restarting replicas, and stopping still works.  And a restart
that a backend completes after its slot was stopped does not outlive the slot."""

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


class SlowStarts(LocalBackend):
    """The local backend, with each start taking ``delay_s`` and going on when the task that
    awaits it is cancelled, as the Docker and Swarm backends' starts do (a thread that
    creates the container or the service)."""

    delay_s = 0.0

    async def start(self, spec):
        async def slow():
            await asyncio.sleep(self.delay_s)
            return await LocalBackend.start(self, spec)

        return await asyncio.shield(asyncio.ensure_future(slow()))


def _alive(marker):
    """Pids of live processes whose command line holds ``marker``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[1].split()[0] != "Z":
                    out.append(int(pid))
        except OSError:
            pass
    return out


async def test_a_replica_restarting_when_its_slot_stops_is_not_left_running(tmp_path):
    """A replica exits; while its restart is being started (the backend takes its time), the
    model is scaled to 0.  The restart the backend completes afterwards must be stopped:
    on Swarm such a service outlived the Clipper that made it."""
    marker = "clipper-test-" + os.urandom(4).hex()
    argv = [sys.executable, "-c", f"import time; time.sleep(600)  # {marker}"]
    backend = SlowStarts("test-" + os.urandom(4).hex(), str(tmp_path / "logs"))
    sup = Supervisor(backend, "tcp://127.0.0.1:1", store=None, max_backoff_s=0.2)
    sup.start()
    mv = ModelVersion("m", "1", "doubles", -1, (), {"kind": "command", "argv": argv}, 1, ())
    try:
        await sup.set_replicas(mv, 1)
        first = _alive(marker)
        assert len(first) == 1
        backend.delay_s = 0.5
        os.kill(first[0], signal.SIGKILL)
        await _wait(lambda: sup.containers() and sup.containers()[0]["state"] != "running")
        await asyncio.sleep(0.2)  # the restart is being started now (0.1 s backoff)
        await sup.set_replicas(mv, 0)
        await asyncio.sleep(backend.delay_s + 0.5)  # the start completes meanwhile
        assert _alive(marker) == [], "the restart started as its slot stopped runs on"
        assert sup.containers() == []
    finally:
        await sup.close()
        await backend.close()
        for pid in _alive(marker):
            os.kill(pid, signal.SIGKILL)
