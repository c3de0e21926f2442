"""LocalProcessManager: each replica is a child process of the frontend (the default).

Replicas run in their own session, so a frontend that crashes (SIGKILL, OOM) leaves them
running; they keep reconnecting to the RPC address.  The manager records every replica it
starts (instance id, pid, RPC address) in the state store; a frontend restarted on the same
state directory *re-adopts* the survivors instead of starting duplicates: it opens a pidfd on
the recorded pid (so the pid cannot be recycled under it), checks that the process still
carries the recorded ``CLIPPER_INSTANCE_ID`` in its environment, and then supervises it
through the pidfd like a child.  A survivor that the restored state no longer needs, or that
connects to another RPC address than the new frontend binds, is stopped (the same checks
first: only a process that is provably the recorded replica is ever signalled).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Callable

from .. import log
from ..config import ModelVersion
from .base import ContainerManager, replica_environment, replica_spec

ENV_INSTANCE = "CLIPPER_INSTANCE_ID"


def _open_survivor(pid: int, instance_id: str) -> int | None:
    """A pidfd on ``pid`` if it is alive and is the replica ``instance_id``; else None."""
    if not isinstance(pid, int) or pid <= 1 or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None  # gone (or not ours to see)
    # with the pidfd held, the pid cannot be given to another process: check it is ours
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        env = []
    if f"{ENV_INSTANCE}={instance_id}".encode() not in env:  # a zombie's environ is empty
        os.close(fd)
        return None
    return fd


class _Adopted:
    """A replica process left running by a previous frontend: not our child, so its exit is
    watched through a pidfd and its exit status is unknown (reported as -1)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._fd = pidfd
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._loop.add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self._close()
        self.returncode = -1
        if not self._exited.done():
            self._exited.set_result(-1)

    def _close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._fd < 0:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._fd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Slot:
    """One replica position; the process in it is restarted when it dies."""

    def __init__(self, mv: ModelVersion, index: int, instance_id: str | None = None) -> None:
        self.mv = mv
        self.index = index
        self.instance_id = instance_id or \
            f"{mv.name}-{mv.version}-{index}-{uuid.uuid4().hex[:8]}"
        self.proc: asyncio.subprocess.Process | _Adopted | None = None
        #: a survivor of a previous frontend, supervised before any new process is started
        self.adopted: _Adopted | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.restarts = 0
        self.started_at = 0.0
        self.last_exit: int | None = None
        self.gpu: str | None = None

    def to_json(self) -> dict:
        running = self.proc is not None and self.proc.returncode is None
        return {"model_name": self.mv.name, "model_version": self.mv.version,
                "instance_id": self.instance_id, "index": self.index,
                "pid": self.proc.pid if self.proc else None,
                "state": "running" if running else ("stopping" if self.stopping
                                                    else "restarting"),
                "restarts": self.restarts, "last_exit_code": self.last_exit,
                "gpu": self.gpu, "manager": "local",
                "adopted": isinstance(self.proc, _Adopted)}


class LocalProcessManager(ContainerManager):
    """Starts replicas as child processes, restarts them when they die, stops them on
    scale-down.  GPUs are assigned through ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, rpc_address: str, log_dir: str, *,
                 on_exit: Callable[[str, str], None] | None = None,
                 max_backoff_s: float = 5.0, store=None, rpc_credentials=None) -> None:
        self.rpc_address = rpc_address
        #: the replicas' CURVE credentials (clipper_rpc.auth.Credentials), None: no auth
        self.rpc_credentials = rpc_credentials
        self.log_dir = log_dir
        self.on_exit = on_exit
        self.max_backoff_s = max_backoff_s
        #: a StateStore (or None): where the replica processes are recorded for re-adoption
        self.store = store
        self._slots: dict[tuple, list[_Slot]] = {}
        os.makedirs(log_dir, exist_ok=True)

    # ---------------------------------------------------------------- records
    def _record(self, slot: _Slot) -> None:
        if self.store is not None and slot.proc is not None:
            self.store.put_replica(slot.instance_id, {
                "instance_id": slot.instance_id, "model_name": slot.mv.name,
                "model_version": slot.mv.version, "index": slot.index, "pid": slot.proc.pid,
                "rpc_address": self.rpc_address})

    def _forget(self, instance_id: str) -> None:
        if self.store is not None:
            self.store.delete_replica(instance_id)

    async def restore(self, models: list[ModelVersion]) -> dict:
        """After a restart: start the replicas of ``models`` (their ``replicas`` count each),
        re-adopting the processes a crashed frontend left running where they are provably
        the recorded replica and connect to this frontend's RPC address; stop recorded
        survivors that are not needed.  Returns counts: adopted, started, stopped."""
        records = self.store.replicas() if self.store is not None else []
        by_key: dict[tuple, dict[int, dict]] = {}
        unneeded: list[dict] = []
        for rec in records:
            try:
                key = (rec["model_name"], rec["model_version"])
                index = rec["index"]
            except (KeyError, TypeError):
                continue
            slots = by_key.setdefault(key, {})
            if index in slots:
                unneeded.append(rec)
            else:
                slots[index] = rec
        counts = {"adopted": 0, "started": 0, "stopped": 0}
        loop = asyncio.get_running_loop()
        for mv in models:
            recs = by_key.pop(mv.key, {})
            if replica_spec(mv, self.rpc_address) is None or mv.replicas <= 0:
                unneeded.extend(recs.values())
                continue
            slots = self._slots.setdefault(mv.key, [])
            for i in range(len(slots), mv.replicas):
                rec = recs.pop(i, None)
                adopted = None
                if rec is not None and rec.get("rpc_address") == self.rpc_address:
                    fd = _open_survivor(rec.get("pid"), rec["instance_id"])
                    if fd is not None:
                        adopted = _Adopted(rec["pid"], fd)
                if rec is not None and adopted is None:
                    unneeded.append(rec)
                slot = _Slot(mv, i, rec["instance_id"] if adopted else None)
                slot.adopted = adopted
                counts["adopted" if adopted else "started"] += 1
                slots.append(slot)
                slot.task = loop.create_task(self._supervise(slot))
            unneeded.extend(recs.values())
        for recs in by_key.values():
            unneeded.extend(recs.values())
        results = await asyncio.gather(*(self._stop_survivor(r) for r in unneeded))
        counts["stopped"] = sum(results)
        return counts

    async def _stop_survivor(self, rec: dict, grace_s: float = 3.0) -> bool:
        """Stop a recorded replica process nobody needs any more, if it is still running."""
        iid = rec.get("instance_id", "?")
        fd = _open_survivor(rec.get("pid"), iid)
        stopped = False
        if fd is not None:
            proc = _Adopted(rec["pid"], fd)
            log.container.warning("stopping replica %s (pid %d) left running by a previous "
                                  "Clipper: the restored state does not need it, or it "
                                  "connects to another RPC address", iid, proc.pid)
            try:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), grace_s)
            except ProcessLookupError:
                pass
            except asyncio.TimeoutError:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
            stopped = True
        if isinstance(iid, str):
            self._forget(iid)
        return stopped

    def slots(self, key: tuple) -> list[_Slot]:
        return list(self._slots.get(key, []))

    async def set_replicas(self, mv: ModelVersion, n: int,
                           drain: Callable[[str], "asyncio.Future | None"] | None = None) -> None:
        if replica_spec(mv, self.rpc_address) is None:
            return  # external replicas: started by their owner
        slots = self._slots.setdefault(mv.key, [])
        for s in slots:
            s.mv = mv
        while len(slots) < n:
            slot = _Slot(mv, len(slots))
            slots.append(slot)
            slot.task = asyncio.get_running_loop().create_task(self._supervise(slot))
        victims = []
        while len(slots) > n:
            victims.append(slots.pop())
        if victims:
            await asyncio.gather(*(self._stop(s, drain) for s in victims))
        if not slots:
            self._slots.pop(mv.key, None)

    def _gpu_for(self, slot: _Slot) -> str | None:
        gpus = slot.mv.gpus
        if not gpus:
            return None
        g = str(gpus[slot.index % len(gpus)])
        return "" if g.lower() == "cpu" else g

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        spec = replica_spec(slot.mv, self.rpc_address, self.rpc_credentials)
        env = replica_environment(os.environ, spec)
        env["CLIPPER_INSTANCE_ID"] = slot.instance_id
        env["PYTHONUNBUFFERED"] = "1"
        slot.gpu = self._gpu_for(slot)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        path = os.path.join(self.log_dir, f"{slot.instance_id}.log")
        with open(path, "ab") as out:
            return await asyncio.create_subprocess_exec(
                *spec.argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)

    async def _supervise(self, slot: _Slot) -> None:
        backoff = 0.1
        while not slot.stopping:
            if slot.adopted is not None:
                slot.proc, slot.adopted = slot.adopted, None
                log.container.info("re-adopted replica %s (pid %d), left running by a "
                                   "previous Clipper", slot.instance_id, slot.proc.pid)
            else:
                try:
                    slot.proc = await self._spawn(slot)
                except OSError as e:
                    log.container.error("cannot start replica %s: %s", slot.instance_id, e)
                    await asyncio.sleep(backoff)
                    backoff = min(self.max_backoff_s, backoff * 2)
                    continue
                log.container.info("started replica %s (pid %d)", slot.instance_id,
                                   slot.proc.pid)
                if slot.stopping:  # stopped while it was being spawned
                    try:
                        slot.proc.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            slot.started_at = time.monotonic()
            self._record(slot)
            code = await slot.proc.wait()
            slot.last_exit = code
            if self.on_exit is not None:
                self.on_exit(slot.instance_id, f"process exited with code {code}")
            if slot.stopping:
                break
            slot.restarts += 1
            if time.monotonic() - slot.started_at > 10:
                backoff = 0.1  # it ran for a while: restart promptly
            log.container.warning("replica %s exited with code %s; restart %d in %.1f s "
                                  "(log: %s)", slot.instance_id, code, slot.restarts, backoff,
                                  os.path.join(self.log_dir, f"{slot.instance_id}.log"))
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    async def _stop(self, slot: _Slot, drain=None, grace_s: float = 3.0) -> None:
        slot.stopping = True
        if drain is not None:
            fut = drain(slot.instance_id)
            if fut is not None:
                try:
                    await asyncio.wait_for(fut, grace_s)
                except asyncio.TimeoutError:
                    pass
        await self._terminate(slot, slot.proc if slot.proc is not None else slot.adopted,
                              grace_s)
        if slot.task is not None and slot.task is not asyncio.current_task():
            try:
                await asyncio.wait_for(slot.task, grace_s)  # cancels it on timeout
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        # a process the supervisor was spawning while we stopped the slot
        if slot.proc is not None and slot.proc.returncode is None:
            await self._terminate(slot, slot.proc, grace_s)
        self._forget(slot.instance_id)

    async def _terminate(self, slot: _Slot, proc, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns once ``proc`` has exited."""
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), grace_s)
        except ProcessLookupError:
            pass
        except asyncio.TimeoutError:
            log.container.warning("replica %s ignored SIGTERM; killing it", slot.instance_id)
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()

    def containers(self) -> list[dict]:
        return [s.to_json() for slots in self._slots.values() for s in slots]

    async def stop_model(self, key: tuple) -> None:
        slots = self._slots.pop(key, [])
        await asyncio.gather(*(self._stop(s) for s in slots))

    async def close(self) -> None:
        keys = list(self._slots)
        await asyncio.gather(*(self.stop_model(k) for k in keys))
