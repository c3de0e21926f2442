"""The shared state store of several frontends: apps, models, versions, links, batch sizes,
policies and learned policy states in Redis (``clipper start --state redis://HOST:PORT/DB``).

It has the same synchronous interface as the SQLite store (:class:`clipper_core.state.Store`),
through ``redis``'s synchronous client: the registry writes through the store under its own
lock, from management calls (rare; one write measured 0.8 ms, one read of all apps 0.2 ms,
on loopback on a loaded 2-core machine), and
the selection writer already writes policy states from a thread.  Making the interface async
would change every caller for no gain on the query path, which never reads the store.

Every write is one MULTI/EXEC transaction (or one Lua script) that also PUBLISHes a change
notice on :data:`CHANNEL`: ``{"origin": <store id>, "kind": "registry" | "policy",
"app": <name or null>}``.  :meth:`RedisStateStore.watch` (``redis.asyncio`` pub/sub) passes
other frontends' notices to a callback, and a ``{"kind": "resync"}`` after Redis came back
(notices sent while it was unreachable are lost, so everything is read again).

Keys (prefix ``clipper:``): ``meta`` (hash), ``apps`` (hash name -> JSON), ``models`` (hash
"name\\0version" -> JSON), ``model_order`` (zset, creation order), ``current`` (hash),
``links`` (zset "app\\0model", link order), ``seq`` (counter for the orders),
``policy:<app>`` (hash uid -> JSON), ``replicas`` (hash instance id -> JSON: the replica
processes the deploying frontend runs), ``artifact:<name>\\0<version>`` (hash file name ->
bytes: closures and model files), ``shared:cluster_id`` and ``shared:rpc_keys`` (the
cluster's id, which labels its replicas, and its RPC CURVE keys).  The deployer lease and the
frontends' announcements are ``clipper:deployer`` and ``clipper:frontend:<id>``
(:mod:`clipper_core.cluster`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Awaitable, Callable, Iterator

import redis
import redis.asyncio as aioredis

from . import log
from .errors import Conflict, StateStoreError, StateStoreUnavailable

SCHEMA_VERSION = 1
PREFIX = "clipper:"
CHANNEL = PREFIX + "changes"
SEP = "\0"

# delete an app with its links and policy states
_DELETE_APP = """
redis.call('HDEL', KEYS[1], ARGV[1])
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(m, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '\\0' then
    redis.call('ZREM', KEYS[2], m)
  end
end
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', KEYS[4], ARGV[2])
return 1
"""

# forget one model version; ARGV[3] == '1': also its current version and its links
_DELETE_VERSION = """
local member = ARGV[1] .. '\\0' .. ARGV[2]
redis.call('HDEL', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[3], ARGV[1])
  for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local sep = string.find(m, '\\0', 1, true)
    if sep and string.sub(m, sep + 1) == ARGV[1] then redis.call('ZREM', KEYS[4], m) end
  end
end
redis.call('PUBLISH', KEYS[5], ARGV[4])
return 1
"""

# write policy states only while the app exists (it may be deleted while they travel)
_PUT_POLICY = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PUBLISH', KEYS[3], ARGV[2])
return 1
"""


def _k(name: str) -> str:
    return PREFIX + name


class RedisStateStore:
    """The state store in Redis (see the module docstring)."""

    shared = True

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.path = url  # what error messages name
        #: this store's id: notices it published itself are not passed to ``watch``
        self.origin = uuid.uuid4().hex
        self.timeout_s = timeout_s
        try:
            self._r = redis.Redis.from_url(url, decode_responses=True,
                                           socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        except ValueError as e:
            raise StateStoreError(f"--state {url!r} is not a Redis URL ({e}); give "
                                  "redis://HOST:PORT/DB") from None
        self._bin: redis.Redis | None = None  # bytes, not str: model artifacts
        self._delete_app = self._r.register_script(_DELETE_APP)
        self._delete_version = self._r.register_script(_DELETE_VERSION)
        self._put_policy = self._r.register_script(_PUT_POLICY)
        version = self._call(self._r.hget, _k("meta"), "schema_version")
        if version is None:
            self._call(self._r.hsetnx, _k("meta"), "schema_version", str(SCHEMA_VERSION))
        elif version != str(SCHEMA_VERSION):
            raise StateStoreError(f"the Redis state store at {url} has schema version "
                                  f"{version}, this Clipper reads version {SCHEMA_VERSION}; "
                                  "use another Redis database (the /DB in the URL)")

    # -------------------------------------------------------------- generic helpers
    def _call(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StateStoreUnavailable(
                f"the Redis state store at {self.url} is unreachable ({e or type(e).__name__}); "
                "the change was not made: queries go on with what each frontend holds; retry "
                "when Redis is back") from None
        except redis.RedisError as e:
            raise StateStoreError(
                f"the Redis state store at {self.url} failed: {e or type(e).__name__}; the "
                "change was not made (queries go on with what this frontend holds; retry "
                "when Redis is reachable)") from None

    def _notice(self, kind: str, app: str | None = None) -> str:
        return json.dumps({"origin": self.origin, "kind": kind, "app": app})

    def _tx(self, kind: str, app: str | None, *ops: tuple) -> None:
        """Run ``ops`` (method name, args...) and the change notice in one transaction."""
        def run() -> None:
            p = self._r.pipeline(transaction=True)
            for name, *args in ops:
                getattr(p, name)(*args)
            p.publish(CHANNEL, self._notice(kind, app))
            p.execute()
        self._call(run)

    def _docs(self, values: Iterator[str]) -> Iterator[Any]:
        for v in values:
            try:
                yield json.loads(v)
            except (ValueError, TypeError) as e:
                raise self.invalid(f"a record is not valid JSON ({e})") from None

    def invalid(self, what: str) -> StateStoreError:
        return StateStoreError(f"the Redis state store at {self.url} is corrupted: {what}; "
                               "use another Redis database (the /DB in the URL) or delete "
                               "the clipper:* keys")

    def close(self) -> None:
        self._r.close()
        if self._bin is not None:
            self._bin.close()

    # -------------------------------------------------------------- apps
    def put_app(self, name: str, data: dict, *, create: bool = False) -> None:
        """``create``: only if no frontend has created it meanwhile (else Conflict)."""
        if create:
            self._create("apps", name, data, f"application {name!r} already exists (made "
                         "through another frontend)", name)
        else:
            self._tx("registry", name, ("hset", _k("apps"), name, json.dumps(data)))

    def _create(self, key: str, field: str, data: dict, conflict: str,
                app: str | None = None) -> None:
        def run() -> int:
            p = self._r.pipeline(transaction=True)
            p.hsetnx(_k(key), field, json.dumps(data))
            p.publish(CHANNEL, self._notice("registry", app))
            return p.execute()[0]
        if not self._call(run):
            raise Conflict(conflict)

    def delete_app(self, name: str) -> None:
        self._call(self._delete_app,
                   keys=[_k("apps"), _k("links"), _k("policy:" + name), CHANNEL],
                   args=[name, self._notice("registry", name)])

    def apps(self) -> list[dict]:
        d = self._call(self._r.hgetall, _k("apps"))
        return list(self._docs(d[n] for n in sorted(d)))

    # -------------------------------------------------------------- models
    def put_model(self, name: str, version: str, data: dict, *, create: bool = False) -> None:
        """``create``: only if no frontend has created it meanwhile (else Conflict)."""
        member = name + SEP + version

        def run() -> int:
            seq = self._r.incr(_k("seq"))
            p = self._r.pipeline(transaction=True)
            if create:
                p.hsetnx(_k("models"), member, json.dumps(data))
            else:
                p.hset(_k("models"), member, json.dumps(data))
            p.zadd(_k("model_order"), {member: seq}, nx=True)  # keeps its creation order
            p.publish(CHANNEL, self._notice("registry"))
            return p.execute()[0]
        if not self._call(run) and create:
            raise Conflict(f"model {name!r} version {version!r} already exists (made through "
                           "another frontend)")

    def delete_model_version(self, name: str, version: str, *,
                             drop_current: bool = False) -> None:
        self._call(self._delete_version,
                   keys=[_k("models"), _k("model_order"), _k("current"), _k("links"), CHANNEL],
                   args=[name, version, "1" if drop_current else "0",
                         self._notice("registry")])

    def models(self) -> list[dict]:
        def run() -> list:
            order = self._r.zrange(_k("model_order"), 0, -1)
            docs = self._r.hmget(_k("models"), order) if order else []
            return [d for d in docs if d is not None]
        return list(self._docs(self._call(run)))

    def set_current_version(self, name: str, version: str | None) -> None:
        if version is None:
            self._tx("registry", None, ("hdel", _k("current"), name))
        else:
            self._tx("registry", None, ("hset", _k("current"), name, version))

    def current_versions(self) -> dict[str, str]:
        return self._call(self._r.hgetall, _k("current"))

    # -------------------------------------------------------------- links
    def add_link(self, app: str, model: str) -> None:
        def run() -> None:
            seq = self._r.incr(_k("seq"))
            p = self._r.pipeline(transaction=True)
            p.zadd(_k("links"), {app + SEP + model: seq}, nx=True)
            p.publish(CHANNEL, self._notice("registry", app))
            p.execute()
        self._call(run)

    def delete_link(self, app: str, model: str) -> None:
        self._tx("registry", app, ("zrem", _k("links"), app + SEP + model))

    def links(self) -> list[tuple[str, str]]:
        return [tuple(m.split(SEP, 1))
                for m in self._call(self._r.zrange, _k("links"), 0, -1)]

    # -------------------------------------------------------------- policy state
    def put_policy_states(self, app: str, docs: dict[str, Any]) -> None:
        args: list[str] = [app, self._notice("policy", app)]
        for uid, d in docs.items():
            args += [uid, json.dumps(d)]
        self._call(self._put_policy, keys=[_k("apps"), _k("policy:" + app), CHANNEL],
                   args=args)

    def merge_policy_states(self, app: str, docs: dict[str, tuple[Any, Any]],
                            merge: Callable[[Any, Any, Any], Any]) -> dict[str, Any]:
        """Write ``merge(stored, base, mine)`` for each ``uid: (base, mine)`` of ``docs``,
        atomically against other frontends' writes (WATCH, retried on a conflict); nothing
        when the app no longer exists.  Returns the documents written."""
        key = _k("policy:" + app)
        uids = list(docs)

        def run() -> dict[str, Any]:
            with self._r.pipeline(transaction=True) as p:
                while True:
                    try:
                        p.watch(key, _k("apps"))
                        if not p.hexists(_k("apps"), app):
                            p.unwatch()
                            return {}
                        stored = p.hmget(key, uids)
                        merged = {}
                        for uid, raw in zip(uids, stored):
                            try:
                                old = json.loads(raw) if raw is not None else None
                            except ValueError:
                                old = None  # unreadable: this frontend's copy replaces it
                            merged[uid] = merge(old, *docs[uid]) if old is not None \
                                else docs[uid][1]
                        p.multi()
                        p.hset(key, mapping={u: json.dumps(d) for u, d in merged.items()})
                        p.publish(CHANNEL, self._notice("policy", app))
                        p.execute()
                        return merged
                    except redis.WatchError:
                        continue
        return self._call(run)

    def policy_state(self, app: str, uid: str) -> Any:
        v = self._call(self._r.hget, _k("policy:" + app), uid)
        return json.loads(v) if v is not None else None

    def policy_states(self, app: str, limit: int | None = None) -> dict[str, Any]:
        key = _k("policy:" + app)
        if limit is None:
            d = self._call(self._r.hgetall, key)
        else:
            # the app's own state (uid '') first, so that a limit never drops it
            def run() -> dict:
                out = {}
                own = self._r.hget(key, "")
                if own is not None:
                    out[""] = own
                for uid, v in self._r.hscan_iter(key, count=limit):
                    if len(out) >= limit:
                        break
                    out.setdefault(uid, v)
                return out
            d = self._call(run)
        return {uid: json.loads(v) for uid, v in d.items()}

    def delete_policy_states(self, app: str) -> None:
        self._tx("policy", app, ("delete", _k("policy:" + app)))

    # -------------------------------------------------------------- shared settings
    def shared_value(self, name: str, make: Callable[[], str]) -> str:
        """The cluster-wide value ``name`` (``clipper:shared:NAME``): the first frontend to
        ask creates it with ``make()``, every other reads that one."""
        key = _k("shared:" + name)

        def run() -> str:
            self._r.set(key, make(), nx=True)
            return self._r.get(key)
        return self._call(run)

    # -------------------------------------------------------------- model artifacts
    # a closure or model file deployed through any frontend, for whichever frontend deploys
    # (it writes a copy into its own state directory before starting replicas)
    def _binary(self) -> redis.Redis:
        if self._bin is None:
            self._bin = redis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                             socket_connect_timeout=self.timeout_s)
        return self._bin

    def put_artifact(self, name: str, version: str, filename: str, blob: bytes) -> None:
        self._call(self._binary().hset, _k("artifact:" + name + SEP + version), filename, blob)

    def artifact(self, name: str, version: str, filename: str) -> bytes | None:
        return self._call(self._binary().hget, _k("artifact:" + name + SEP + version),
                          filename)

    def delete_artifacts(self, name: str, version: str) -> None:
        self._call(self._r.delete, _k("artifact:" + name + SEP + version))

    # -------------------------------------------------------------- replica processes
    # the deploying frontend records the replicas it runs; any frontend shows them, and the
    # next deployer forgets the records of those that are gone
    def put_replica(self, instance_id: str, data: dict) -> None:
        self._call(self._r.hset, _k("replicas"), instance_id, json.dumps(data))

    def delete_replica(self, instance_id: str) -> None:
        self._call(self._r.hdel, _k("replicas"), instance_id)

    def replicas(self) -> list[dict]:
        d = self._call(self._r.hgetall, _k("replicas"))
        return list(self._docs(d[n] for n in sorted(d)))

    # -------------------------------------------------------------- change notices
    async def watch(self, callback: Callable[[dict], Awaitable[None] | None], *,
                    retry_s: float = 0.5) -> None:
        """Pass every change notice another frontend publishes to ``callback`` until
        cancelled; after Redis was unreachable, a ``{"kind": "resync"}`` notice first."""
        lost = False
        while True:
            client = aioredis.Redis.from_url(self.url, decode_responses=True,
                                             socket_connect_timeout=self.timeout_s)
            try:
                async with client.pubsub() as ps:
                    await ps.subscribe(CHANNEL)
                    if lost:
                        log.state.warning("the Redis state store at %s is reachable again: "
                                          "reading the whole state", self.url)
                        lost = False
                        await _maybe_await(callback({"kind": "resync", "app": None}))
                    async for msg in ps.listen():
                        if msg.get("type") != "message":
                            continue
                        try:
                            notice = json.loads(msg["data"])
                        except (ValueError, TypeError):
                            log.state.error("ignored a malformed change notice on %s", CHANNEL)
                            continue
                        if not isinstance(notice, dict) or notice.get("origin") == self.origin:
                            continue
                        try:
                            await _maybe_await(callback(notice))
                        except Exception:
                            log.state.exception("change notice %s not applied", notice)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as e:
                if not lost:
                    log.state.error("the Redis state store at %s is unreachable (%s): "
                                    "management calls fail, queries go on with what this "
                                    "frontend holds", self.url, e)
                lost = True
            finally:
                await client.aclose()
            await asyncio.sleep(retry_s)


async def _maybe_await(x: Any) -> None:
    if asyncio.iscoroutine(x):
        await x
