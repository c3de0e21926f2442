"""Several frontends sharing a Redis state store: which one deploys, and which are there.

* **The deployer lease.**  One frontend at a time starts and supervises the replicas: the one
  holding ``clipper:deployer``, a redis-py lock (:class:`redis.asyncio.lock.Lock`: ``SET NX
  PX`` with the holder's frontend id as its token, renewed with ``reacquire``).  It is held
  for ``lease_s`` (3 s by default) and renewed every third of that.  The holder counts its
  tenure (:class:`Tenure`) from the moment it *sent* each acquisition or renewal that Redis
  confirmed, and stops deploying once 90 % of ``lease_s`` has passed without one, before the
  key can have expired in Redis and another frontend can have taken it.  A frontend that
  dies (SIGKILL) stops renewing; another takes the lease within ``lease_s`` plus one renewal
  period and re-adopts the running replicas.
* **Announcements.**  Every frontend keeps ``clipper:frontend:<id>`` (its RPC, query and
  management addresses) alive with the same expiry, refreshed with each renewal; a frontend
  that falls silent drops out of the list within ``lease_s``.  The RPC addresses of the list
  go to the replicas (REGISTERED ``frontends``, docs/protocol.md), which connect to each.

While Redis is unreachable nobody can renew: the holder stops deploying when its tenure runs
out (replicas keep running and serving, only restarts and deployments wait), and the list of
frontends stays as it was last read.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Awaitable, Callable

import redis
import redis.asyncio as aioredis
from redis.asyncio.lock import Lock

from . import log
from .errors import StateStoreUnavailable
from .tasks import cancel_and_wait

LEASE_KEY = "clipper:deployer"
FRONTEND_PREFIX = "clipper:frontend:"
#: the holder stops deploying this fraction of ``lease_s`` before its lease can expire
MARGIN = 0.1


class Tenure:
    """Sans-IO: may this frontend act as the deployer at time ``now``?

    ``confirmed(sent_at)`` records an acquisition or renewal that Redis confirmed, sent at
    ``sent_at`` (Redis set the key's expiry to ``lease_s`` after it received the command,
    which is no earlier).  ``holds(now)`` is true only before ``sent_at + lease_s * (1 -
    MARGIN)`` of the latest one, so never once the key may have expired."""

    def __init__(self, lease_s: float, margin: float = MARGIN) -> None:
        if not lease_s > 0 or not 0 <= margin < 1:
            raise ValueError("need lease_s > 0 and 0 <= margin < 1")
        self.lease_s = lease_s
        self.margin = margin
        self.until = -math.inf

    def confirmed(self, sent_at: float) -> None:
        self.until = max(self.until, sent_at + self.lease_s * (1 - self.margin))

    def lost(self) -> None:
        """Redis said the lease is someone else's (or gone)."""
        self.until = -math.inf

    def holds(self, now: float) -> bool:
        return now < self.until


class Cluster:
    """This frontend's membership of a cluster: the deployer lease and the announcements
    (see the module docstring).  ``on_role(True|False)`` runs, one call at a time and in
    order, when this frontend becomes or stops being the deployer; ``on_frontends(addresses)``
    when the RPC addresses of the live frontends change."""

    def __init__(self, url: str, frontend_id: str, *, lease_s: float = 3.0,
                 on_role: Callable[[bool], Awaitable[None]] | None = None,
                 on_frontends: Callable[[tuple], None] | None = None) -> None:
        self.url = url
        self.id = frontend_id
        self.announcement = "{}"
        self.lease_s = lease_s
        self.renew_s = lease_s / 3
        self.tenure = Tenure(lease_s)
        self.on_role = on_role
        self.on_frontends = on_frontends
        #: True while this frontend may start, stop and supervise replicas
        self.deployer = False
        #: the frontend id holding the lease, as last read (None: nobody, or unknown)
        self.deployer_id: str | None = None
        #: live frontends as last read: id -> announcement
        self.members: dict[str, dict] = {}
        self.frontends: tuple = ()
        self._r = aioredis.Redis.from_url(url, socket_timeout=self.renew_s,
                                          socket_connect_timeout=self.renew_s)
        self._lock = Lock(self._r, LEASE_KEY, timeout=lease_s, blocking=False,
                          thread_local=False)
        self._token = False  # the lock object holds our token (acquired, maybe lapsed)
        self._role_task: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._unreachable = False
        self._left = False

    # ---------------------------------------------------------------- lifecycle
    async def join(self, announcement: dict) -> None:
        """Announce this frontend (``announcement``: its ``rpc`` address and what operators
        want to see) and read the others (raises when Redis is unreachable), then keep the
        announcement and the lease going in the background."""
        self.announcement = json.dumps(announcement)
        try:
            await self._tick()
        except (redis.RedisError, OSError) as e:
            raise StateStoreUnavailable(
                f"cannot join the frontends sharing the Redis state store at {self.url}: "
                f"{e or type(e).__name__}") from None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def leave(self) -> list[str]:
        """Stop renewing, withdraw the announcement and hand the lease back at once (so
        another frontend takes over without waiting for it to expire).  Returns the ids of
        the frontends still alive (read again now, which takes up to one and a half renewal
        periods when others are listed; as last read if Redis is unreachable)."""
        if self._left:
            return []
        self._left = True
        await self.stop_renewing()
        self.deployer = False
        try:
            await self._r.delete(FRONTEND_PREFIX + self.id)
            if self._token:
                self._token = False
                await self._lock.release()
            self.on_frontends = None
            await self._read_members()
            return await self._live(self.others())
        except (redis.RedisError, OSError):
            return self.others()  # as last read; our keys expire by themselves
        finally:
            await self._r.aclose()

    async def _live(self, ids: list[str]) -> list[str]:
        """Those of ``ids`` that renew their announcement (a frontend killed a moment ago is
        still listed until its announcement expires): watched for one and a half renewal
        periods, the expiry of a live one moves forward."""
        if not ids:
            return []
        keys = [FRONTEND_PREFIX + m for m in ids]

        async def ttls() -> list[int]:
            async with self._r.pipeline(transaction=False) as p:
                for k in keys:
                    p.pttl(k)
                return await p.execute()
        loop = asyncio.get_running_loop()
        before, t = await ttls(), loop.time()
        await asyncio.sleep(self.renew_s * 1.5)
        after, elapsed_ms = await ttls(), (loop.time() - t) * 1000
        # a key left alone has lost ``elapsed_ms``; one renewed meanwhile, a renewal period
        # less (it was renewed one period after its previous renewal)
        slack = self.renew_s * 1000 / 2
        return [m for m, t0, t1 in zip(ids, before, after)
                if t1 > 0 and t1 > t0 - elapsed_ms + slack]

    async def stop_renewing(self) -> None:
        """Stop the renewals (and wait for a change of role under way): the lease and the
        announcement expire as if this frontend had died."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._role_task is not None:
            await asyncio.gather(self._role_task, return_exceptions=True)

    def others(self) -> list[str]:
        """The ids of the other live frontends, as last read."""
        return [m for m in self.members if m != self.id]

    # ---------------------------------------------------------------- the renewal loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # wake at the renewal period, and at the end of the tenure if that comes first
            now = loop.time()
            wait = self.renew_s
            if self.deployer:
                wait = min(wait, max(0.0, self.tenure.until - now))
            await asyncio.sleep(wait)
            try:
                # a round takes milliseconds: one slower than a renewal period failed (and
                # the tenure is judged now, not after a Redis that answers slowly)
                await asyncio.wait_for(self._tick(), self.renew_s)
                if self._unreachable:
                    log.state.warning("the deployer lease is reachable again at %s", self.url)
                    self._unreachable = False
            except (redis.RedisError, OSError, asyncio.TimeoutError) as e:
                if not self._unreachable:
                    log.state.error("cannot renew the deployer lease or this frontend's "
                                    "announcement at %s (%s)%s", self.url,
                                    e or type(e).__name__,
                                    ": this frontend stops deploying when its lease runs out"
                                    if self.deployer else "")
                    self._unreachable = True
                self._set_role(self.tenure.holds(loop.time()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.state.exception("deployer lease round failed")

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await self._r.set(FRONTEND_PREFIX + self.id, self.announcement,
                          px=int(self.lease_s * 1000))
        if self._token:
            try:
                await self._lock.reacquire()
                self.tenure.confirmed(sent)
            except redis.exceptions.LockNotOwnedError:
                self.tenure.lost()
                self._token = False
                log.state.warning("this frontend lost the deployer lease (it lapsed)")
        if not self._token:
            sent = loop.time()
            if await self._lock.acquire(token=self.id):
                self._token = True
                self.tenure.confirmed(sent)
        holder = await self._r.get(LEASE_KEY)
        self.deployer_id = holder.decode(errors="replace") if holder is not None else None
        await self._read_members()
        self._set_role(self.tenure.holds(loop.time()))

    async def _read_members(self) -> None:
        keys = [k async for k in self._r.scan_iter(match=FRONTEND_PREFIX + "*", count=100)]
        members = {}
        for k, v in zip(keys, await self._r.mget(keys) if keys else []):
            if v is None:
                continue  # expired between the scan and the read
            try:
                doc = json.loads(v)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("rpc"), str):
                members[k.decode(errors="replace")[len(FRONTEND_PREFIX):]] = doc
        self.members = members
        frontends = tuple(sorted({d["rpc"] for d in members.values()}))
        if frontends != self.frontends:
            self.frontends = frontends
            log.server.info("frontends of the cluster: %s", ", ".join(frontends) or "none")
            if self.on_frontends is not None:
                self.on_frontends(frontends)

    def _set_role(self, deployer: bool) -> None:
        if deployer == self.deployer:
            return
        self.deployer = deployer
        log.server.warning("this frontend %s the deployer (lease %s)",
                           "is now" if deployer else "is no longer", LEASE_KEY)
        if self.on_role is None:
            return
        prev = self._role_task

        async def change() -> None:
            if prev is not None:
                await asyncio.gather(prev, return_exceptions=True)
            try:
                await self.on_role(deployer)
            except Exception:
                log.server.exception("becoming %s the deployer failed",
                                     "" if deployer else "no longer")
        self._role_task = asyncio.get_running_loop().create_task(change())

    def describe_deployer(self) -> str:
        """Who deploys, for error messages."""
        if self.deployer:
            return "this frontend deploys"
        if self.deployer_id is None:
            return "no frontend holds the deployer lease right now"
        m = self.members.get(self.deployer_id, {})
        return (f"the frontend {self.deployer_id} deploys"
                f"{' (management ' + m['management'] + ')' if m.get('management') else ''}")
