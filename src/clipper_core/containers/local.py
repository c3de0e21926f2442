"""LocalBackend: each replica is a child process of the frontend (the embedded default).

Replicas run in their own session, so a frontend that crashes (SIGKILL, OOM) leaves them
running; they keep reconnecting to the RPC address.  Every replica carries the frontend's id
(``CLIPPER_FRONTEND_ID``, one per state directory) and its own identity in its environment;
:meth:`LocalBackend.recover` finds the survivors by that environment, opens a pidfd on each
(so the pid cannot be recycled under it), checks the environment again through the pidfd's
process, and then watches it through the pidfd like a child.  Only a process that provably
is a recorded replica of this frontend is ever signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from .. import log
from .base import (ENV_ADDRESS, ENV_FRONTEND, ENV_INDEX, ENV_INSTANCE, ENV_MODEL,
                   ENV_VERSION, ReplicaBackend, ReplicaRef, ReplicaSpec, ReplicaStartError,
                   replica_environment)


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read().split(b"\0")
    except OSError:
        return {}  # gone, not ours to see, or a zombie (its environ is empty)
    env = {}
    for item in raw:
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


class _Adopted:
    """A replica process left running by a previous frontend: not our child, so its exit is
    watched through a pidfd and its exit status is unknown (reported as None)."""

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
            self._exited.set_result(None)

    def _close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._fd < 0:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._fd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class LocalBackend(ReplicaBackend):
    """Replicas as local processes; GPUs through ``CUDA_VISIBLE_DEVICES``."""

    name = "local"

    def __init__(self, frontend_id: str, log_dir: str, *, python: str = sys.executable) -> None:
        super().__init__()
        self.frontend_id = frontend_id
        self.log_dir = log_dir
        self.python = python
        self._watchers: set[asyncio.Task] = set()
        os.makedirs(log_dir, exist_ok=True)

    def log_path(self, instance_id: str) -> str:
        return os.path.join(self.log_dir, f"{instance_id}.log")

    async def start(self, spec: ReplicaSpec) -> ReplicaRef:
        if spec.image is not None:
            raise ReplicaStartError(
                f"model {spec.model_name}:{spec.model_version} runs the image {spec.image!r}, "
                "and the local backend runs processes: start Clipper with --backend docker")
        if spec.cpus is not None or spec.memory is not None:
            log.container.warning("replica %s: the local backend does not limit CPUs or "
                                  "memory (the docker backend does)", spec.instance_id)
        argv = (self.python, *spec.argv) if spec.python else tuple(spec.argv)
        env = replica_environment(os.environ, spec)
        env[ENV_FRONTEND] = self.frontend_id
        try:
            with open(self.log_path(spec.instance_id), "ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise ReplicaStartError(f"cannot start replica {spec.instance_id} of "
                                    f"{spec.model_name}:{spec.model_version} "
                                    f"({argv[0]}): {e.strerror or e}") from None
        ref = ReplicaRef(spec.instance_id, spec.model_name, spec.model_version, spec.index,
                         spec.rpc_address, handle=proc, pid=proc.pid)
        self._watch(ref)
        return ref

    def _watch(self, ref: ReplicaRef) -> None:
        async def watch() -> None:
            code = await ref.handle.wait()
            self._exited(ref, code, "process exited" + ("" if code is None
                                                         else f" with code {code}"))

        t = asyncio.get_running_loop().create_task(watch())
        self._watchers.add(t)
        t.add_done_callback(self._watchers.discard)

    async def stop(self, ref: ReplicaRef, grace_s: float) -> None:
        proc = ref.handle
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), grace_s)
        except ProcessLookupError:
            pass
        except asyncio.TimeoutError:
            log.container.warning("replica %s ignored SIGTERM; killing it", ref.instance_id)
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()

    async def recover(self) -> list[ReplicaRef]:
        refs = []
        if not hasattr(os, "pidfd_open"):
            return refs
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            env = _environ(pid)
            if env.get(ENV_FRONTEND) != self.frontend_id or ENV_INSTANCE not in env:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            # with the pidfd held the pid cannot be reused: check it is still the same one
            if _environ(pid).get(ENV_INSTANCE) != env[ENV_INSTANCE]:
                os.close(fd)
                continue
            try:
                index = int(env.get(ENV_INDEX, "-1"))
            except ValueError:
                index = -1
            ref = ReplicaRef(env[ENV_INSTANCE], env.get(ENV_MODEL, ""),
                             env.get(ENV_VERSION, ""), index, env.get(ENV_ADDRESS, ""),
                             handle=_Adopted(pid, fd), pid=pid, adopted=True)
            self._watch(ref)
            refs.append(ref)
        return refs

    def describe(self, ref: ReplicaRef) -> dict:
        return {"pid": ref.pid, "log": self.log_path(ref.instance_id)}

    async def logs(self, ref: ReplicaRef, tail: int = 200) -> str:
        return tail_file(self.log_path(ref.instance_id), tail)

    async def close(self) -> None:
        for t in list(self._watchers):
            t.cancel()


def tail_file(path: str, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except OSError:
        return ""
    return b"\n".join(data.splitlines()[-lines:]).decode(errors="replace")
