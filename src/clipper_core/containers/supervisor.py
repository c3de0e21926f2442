"""Supervisor: keeps each model version at its target number of replicas, on any backend.

It owns the replica *slots* of every model version.  A slot keeps its instance id for its
whole life; the replica in it is started through the backend, restarted with exponential
backoff when it exits, drained (no new batches, the one in flight answered) before it is
stopped on scale-down, and recorded in the state store so that operators see it and a
restarted frontend re-adopts it through :meth:`ReplicaBackend.recover`.

A state store that fails (a full or read-only disk) never stops supervision: the error is
logged and the replicas keep being restarted; the record is written again at the next start.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Callable

from .. import log
from ..config import ModelVersion
from ..tasks import cancel_and_wait
from .base import ReplicaBackend, ReplicaExit, ReplicaRef, ReplicaStartError, replica_spec

Drain = Callable[[str], "asyncio.Future | None"]


class _Slot:
    """One replica position of a model version."""

    def __init__(self, mv: ModelVersion, index: int, instance_id: str | None = None) -> None:
        self.mv = mv
        self.index = index
        self.instance_id = instance_id or \
            f"{mv.name}-{mv.version}-{index}-{uuid.uuid4().hex[:8]}"
        self.ref: ReplicaRef | None = None
        self.exit: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.restarts = 0
        self.started_at = 0.0
        self.last_exit: int | None = None
        self.last_error: str | None = None


class Supervisor:
    """Backend-independent replica supervision (see the module docstring)."""

    def __init__(self, backend: ReplicaBackend, rpc_address: str, *, store=None,
                 on_exit: Callable[[str, str], None] | None = None,
                 max_backoff_s: float = 5.0, grace_s: float = 3.0,
                 rpc_credentials=None, any_address: bool = False) -> None:
        self.backend = backend
        self.rpc_address = rpc_address
        #: re-adopt replicas whatever RPC address they were started with (several
        #: frontends: a replica connects to every frontend the cluster lists, so the address
        #: of the deployer that started it, maybe dead now, does not matter)
        self.any_address = any_address
        #: the replicas' CURVE credentials (clipper_rpc.auth.Credentials); None: no auth
        self.rpc_credentials = rpc_credentials
        self.store = store
        self.on_exit = on_exit
        self.max_backoff_s = max_backoff_s
        self.grace_s = grace_s
        self._slots: dict[tuple, list[_Slot]] = {}
        self._by_instance: dict[str, _Slot] = {}
        self._exits_task: asyncio.Task | None = None
        #: state store failures seen (they are logged, never raised)
        self.store_errors = 0

    def start(self) -> None:
        self._exits_task = asyncio.get_running_loop().create_task(self._watch_exits())

    # ---------------------------------------------------------------- records
    def _record(self, slot: _Slot) -> None:
        if self.store is None or slot.ref is None:
            return
        doc = {"instance_id": slot.instance_id, "model_name": slot.mv.name,
               "model_version": slot.mv.version, "index": slot.index,
               "rpc_address": self.rpc_address, "backend": self.backend.name,
               "pid": slot.ref.pid}
        try:
            self.store.put_replica(slot.instance_id, doc)
        except Exception as e:  # a full or read-only state directory: keep supervising
            self._store_failed("record", slot.instance_id, e)

    def _forget(self, instance_id: str) -> None:
        if self.store is None:
            return
        try:
            self.store.delete_replica(instance_id)
        except Exception as e:
            self._store_failed("forget", instance_id, e)

    def _store_failed(self, what: str, instance_id: str, e: Exception) -> None:
        self.store_errors += 1
        log.container.error("cannot %s replica %s in the state store (%s); supervision goes "
                            "on, but a frontend restarted now may not re-adopt it",
                            what, instance_id, e)

    # ---------------------------------------------------------------- exits
    async def _watch_exits(self) -> None:
        async for ex in self.backend.exits():
            try:
                self._on_exit(ex)
            except Exception:
                log.container.exception("replica exit of %s not handled", ex.ref.instance_id)

    def _on_exit(self, ex: ReplicaExit) -> None:
        slot = self._by_instance.get(ex.ref.instance_id)
        if slot is None or slot.ref is not ex.ref:
            return  # a replica no slot holds any more (stopped and forgotten)
        slot.last_exit = ex.code
        if self.on_exit is not None:
            try:
                self.on_exit(slot.instance_id, ex.reason)
            except Exception:
                log.container.exception("on_exit of replica %s failed", slot.instance_id)
        if slot.exit is not None and not slot.exit.done():
            slot.exit.set_result(ex)

    # ---------------------------------------------------------------- starting
    async def _start(self, slot: _Slot) -> ReplicaRef:
        spec = replica_spec(slot.mv, self.rpc_address, slot.instance_id, slot.index,
                            self.rpc_credentials)
        assert spec is not None
        # a start goes on in the backend (a thread creating a container or a service) when
        # the task awaiting it is cancelled (its slot stopped meanwhile): what it started
        # must be stopped then, or it runs on with no slot to stop it
        start = asyncio.ensure_future(self.backend.start(spec))
        try:
            ref = await asyncio.shield(start)
        except asyncio.CancelledError:
            try:
                ref = await start
            except Exception:
                raise asyncio.CancelledError from None
            log.container.info("replica %s of %s:%s started as its slot was stopped; "
                               "stopping it", slot.instance_id, slot.mv.name, slot.mv.version)
            await self.backend.stop(ref, self.grace_s)
            raise
        self._adopt(slot, ref)
        log.container.info("started replica %s of %s:%s (%s)", slot.instance_id, slot.mv.name,
                           slot.mv.version, _short(self.backend.describe(ref)))
        return ref

    def _adopt(self, slot: _Slot, ref: ReplicaRef) -> None:
        slot.ref = ref
        slot.exit = asyncio.get_running_loop().create_future()
        slot.started_at = time.monotonic()
        slot.last_error = None
        self._by_instance[slot.instance_id] = slot
        self._record(slot)

    async def _run(self, slot: _Slot) -> None:
        """Restart the slot's replica whenever it exits, until the slot is stopped."""
        backoff = 0.1
        while not slot.stopping:
            if slot.ref is None:
                try:
                    await self._start(slot)
                except Exception as e:
                    slot.last_error = str(e)
                    log.container.error("cannot start replica %s: %s; retry in %.1f s",
                                        slot.instance_id, e, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(self.max_backoff_s, backoff * 2)
                    continue
                if slot.stopping:  # stopped while it was being started
                    await self.backend.stop(slot.ref, self.grace_s)
            ex = await asyncio.shield(slot.exit)
            if slot.stopping:
                break
            slot.ref = None
            slot.restarts += 1
            if time.monotonic() - slot.started_at > 10:
                backoff = 0.1  # it ran for a while: restart promptly
            log.container.warning("replica %s of %s:%s exited (%s); restart %d in %.1f s",
                                  slot.instance_id, slot.mv.name, slot.mv.version, ex.reason,
                                  slot.restarts, backoff)
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    # ---------------------------------------------------------------- targets
    async def set_replicas(self, mv: ModelVersion, n: int, drain: Drain | None = None) -> None:
        """Start or stop replicas of ``mv`` until ``n`` run.  New replicas are started before
        this returns: a start the backend refuses raises :class:`ReplicaStartError` (and the
        replicas this call started are stopped again).  Scaling down drains first."""
        if replica_spec(mv, self.rpc_address, "-", 0) is None:
            return  # external replicas: started by their owner
        slots = self._slots.setdefault(mv.key, [])
        for s in slots:
            s.mv = mv
        new = []
        loop = asyncio.get_running_loop()
        try:
            while len(slots) < n:
                slot = _Slot(mv, len(slots))
                slots.append(slot)
                new.append(slot)
                await self._start(slot)
                slot.task = loop.create_task(self._run(slot))
        except ReplicaStartError:
            for s in new:
                slots.remove(s)
            await asyncio.gather(*(self._stop(s) for s in new))
            if not slots:
                self._slots.pop(mv.key, None)
            raise
        victims = []
        while len(slots) > n:
            victims.append(slots.pop())
        if victims:
            await asyncio.gather(*(self._stop(s, drain) for s in victims))
        if not slots:
            self._slots.pop(mv.key, None)

    async def _stop(self, slot: _Slot, drain: Drain | None = None) -> None:
        slot.stopping = True
        if drain is not None and slot.ref is not None:
            fut = drain(slot.instance_id)
            if fut is not None:
                try:
                    await asyncio.wait_for(fut, self.grace_s)
                except asyncio.TimeoutError:
                    log.container.warning("replica %s still had a batch in flight after "
                                          "%.1f s of draining; stopping it", slot.instance_id,
                                          self.grace_s)
        if slot.ref is not None:
            try:
                await self.backend.stop(slot.ref, self.grace_s)
            except Exception:
                log.container.exception("stopping replica %s failed", slot.instance_id)
        if slot.task is not None and slot.task is not asyncio.current_task():
            if slot.exit is not None and not slot.exit.done():
                # the backend may report the exit a little later (Docker's die event)
                try:
                    await asyncio.wait_for(asyncio.shield(slot.exit), self.grace_s)
                except asyncio.TimeoutError:
                    pass
            await cancel_and_wait(slot.task)
            # a replica the task was starting when we stopped the slot
            if slot.ref is not None and (slot.exit is None or not slot.exit.done()):
                await self.backend.stop(slot.ref, self.grace_s)
        if self._by_instance.get(slot.instance_id) is slot:
            del self._by_instance[slot.instance_id]
        self._forget(slot.instance_id)

    # ---------------------------------------------------------------- restore
    async def restore(self, models: list[ModelVersion]) -> dict:
        """After a restart: give every model version in ``models`` its ``replicas`` count,
        re-adopting the replicas the backend still sees (same model version, same slot,
        connecting to this frontend's RPC address); stop the survivors nobody needs.
        Returns counts: adopted, started, stopped."""
        refs = await self.backend.recover()
        by_key: dict[tuple, dict[int, ReplicaRef]] = {}
        unneeded: list[ReplicaRef] = []
        for ref in refs:
            slots = by_key.setdefault((ref.model_name, ref.model_version), {})
            if ref.index in slots or (ref.rpc_address != self.rpc_address
                                      and not self.any_address):
                unneeded.append(ref)
            else:
                slots[ref.index] = ref
        counts = {"adopted": 0, "started": 0, "stopped": 0}
        loop = asyncio.get_running_loop()
        for mv in models:
            found = by_key.pop(mv.key, {})
            if replica_spec(mv, self.rpc_address, "-", 0) is None or mv.replicas <= 0:
                unneeded.extend(found.values())
                continue
            slots = self._slots.setdefault(mv.key, [])
            for i in range(len(slots), mv.replicas):
                ref = found.pop(i, None)
                slot = _Slot(mv, i, ref.instance_id if ref is not None else None)
                slots.append(slot)
                if ref is not None:
                    self._adopt(slot, ref)
                    log.container.info("re-adopted replica %s of %s:%s (%s), left running by "
                                       "a previous Clipper", slot.instance_id, mv.name,
                                       mv.version, _short(self.backend.describe(ref)))
                counts["adopted" if ref is not None else "started"] += 1
                slot.task = loop.create_task(self._run(slot))
            unneeded.extend(found.values())
        for found in by_key.values():
            unneeded.extend(found.values())
        for ref in unneeded:
            log.container.warning("stopping replica %s of %s:%s left running by a previous "
                                  "Clipper: the restored state does not need it, or it connects "
                                  "to another RPC address", ref.instance_id, ref.model_name,
                                  ref.model_version)
        await asyncio.gather(*(self.backend.stop(r, self.grace_s) for r in unneeded))
        counts["stopped"] = len(unneeded)
        # records of replicas that are gone (or were just stopped)
        if self.store is not None:
            try:
                recorded = [r.get("instance_id") for r in self.store.replicas()]
            except Exception as e:
                self._store_failed("list", "records", e)
                recorded = []
            for iid in recorded:
                if isinstance(iid, str) and iid not in self._by_instance:
                    self._forget(iid)
        return counts

    # ---------------------------------------------------------------- views
    def slots(self, key: tuple) -> list[_Slot]:
        return list(self._slots.get(key, []))

    def find(self, name: str, version: str | None = None, instance_id: str | None = None
             ) -> list[_Slot]:
        return [s for slots in self._slots.values() for s in slots
                if s.mv.name == name and (version is None or s.mv.version == version)
                and (instance_id is None or s.instance_id == instance_id)]

    async def logs(self, slot: _Slot, tail: int = 200) -> str:
        if slot.ref is None:
            return ""
        return await self.backend.logs(slot.ref, tail)

    def containers(self) -> list[dict]:
        out = []
        for slots in self._slots.values():
            for s in slots:
                running = s.ref is not None and (s.exit is None or not s.exit.done())
                d = {"model_name": s.mv.name, "model_version": s.mv.version,
                     "instance_id": s.instance_id, "index": s.index,
                     "pid": s.ref.pid if s.ref else None,
                     "state": "running" if running else ("stopping" if s.stopping
                                                         else "restarting"),
                     "restarts": s.restarts, "last_exit_code": s.last_exit,
                     "last_error": s.last_error,
                     "gpu": replica_spec(s.mv, self.rpc_address, "-", s.index).gpu,
                     "manager": self.backend.name,
                     "adopted": bool(s.ref is not None and s.ref.adopted)}
                if s.ref is not None:
                    d.update(self.backend.describe(s.ref))
                out.append(d)
        return out

    async def detach(self) -> None:
        """Stop supervising without stopping any replica: another frontend of the cluster
        deploys from now on and re-adopts them (:meth:`restore`)."""
        slots = [s for ss in self._slots.values() for s in ss]
        self._slots.clear()
        self._by_instance.clear()
        for slot in slots:
            slot.stopping = True
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*(s.task for s in slots if s.task is not None),
                             return_exceptions=True)

    async def stop_leftovers(self) -> int:
        """Stop every replica the backend can see that no slot holds (the last frontend of a
        cluster going away stops the replicas it did not deploy itself); returns how many."""
        refs = [r for r in await self.backend.recover() if r.instance_id not in self._by_instance]
        await asyncio.gather(*(self.backend.stop(r, self.grace_s) for r in refs))
        for r in refs:
            self._forget(r.instance_id)
        return len(refs)

    def records(self) -> list[dict]:
        """The replica records in the store (with several frontends: the deployer's)."""
        if self.store is None:
            return []
        try:
            return self.store.replicas()
        except Exception as e:
            self._store_failed("list", "records", e)
            return []

    async def close(self) -> None:
        """Stop every replica (the backend's own resources stay; see backend.close)."""
        slots = [s for ss in self._slots.values() for s in ss]
        self._slots.clear()
        await asyncio.gather(*(self._stop(s) for s in slots))
        await cancel_and_wait(self._exits_task)


def _short(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if k in ("pid", "container"))
