"""LocalProcessManager: each replica is a child process of the frontend (the default)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Callable

from .. import log
from ..config import ModelVersion
from .base import ContainerManager, replica_spec


class _Slot:
    """One replica position; the process in it is restarted when it dies."""

    def __init__(self, mv: ModelVersion, index: int) -> None:
        self.mv = mv
        self.index = index
        self.instance_id = f"{mv.name}-{mv.version}-{index}-{uuid.uuid4().hex[:8]}"
        self.proc: asyncio.subprocess.Process | None = None
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
                "gpu": self.gpu, "manager": "local"}


class LocalProcessManager(ContainerManager):
    """Starts replicas as child processes, restarts them when they die, stops them on
    scale-down.  GPUs are assigned through ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, rpc_address: str, log_dir: str, *,
                 on_exit: Callable[[str, str], None] | None = None,
                 max_backoff_s: float = 5.0) -> None:
        self.rpc_address = rpc_address
        self.log_dir = log_dir
        self.on_exit = on_exit
        self.max_backoff_s = max_backoff_s
        self._slots: dict[tuple, list[_Slot]] = {}
        os.makedirs(log_dir, exist_ok=True)

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
        spec = replica_spec(slot.mv, self.rpc_address)
        env = dict(os.environ)
        env["CLIPPER_INSTANCE_ID"] = slot.instance_id
        env["PYTHONUNBUFFERED"] = "1"
        slot.gpu = self._gpu_for(slot)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        env.update(dict(spec.env))
        path = os.path.join(self.log_dir, f"{slot.instance_id}.log")
        with open(path, "ab") as out:
            return await asyncio.create_subprocess_exec(
                *spec.argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)

    async def _supervise(self, slot: _Slot) -> None:
        backoff = 0.1
        while not slot.stopping:
            try:
                slot.proc = await self._spawn(slot)
            except OSError as e:
                log.container.error("cannot start replica %s: %s", slot.instance_id, e)
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            slot.started_at = time.monotonic()
            log.container.info("started replica %s (pid %d)", slot.instance_id, slot.proc.pid)
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
        proc = slot.proc
        if proc is not None and proc.returncode is None:
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
        if slot.task is not None and slot.task is not asyncio.current_task():
            try:
                await asyncio.wait_for(slot.task, grace_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                slot.task.cancel()

    def containers(self) -> list[dict]:
        return [s.to_json() for slots in self._slots.values() for s in slots]

    async def stop_model(self, key: tuple) -> None:
        slots = self._slots.pop(key, [])
        await asyncio.gather(*(self._stop(s) for s in slots))

    async def close(self) -> None:
        keys = list(self._slots)
        await asyncio.gather(*(self.stop_model(k) for k in keys))
