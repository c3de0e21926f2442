"""The state store: apps, models, versions, links, replica counts, the local replica processes
and policy state in SQLite.

One file, ``state.db`` in the state directory.  Every write is its own transaction, so a
frontend killed at any moment restarts from a consistent state.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any, Iterator, Protocol

from . import log
from .errors import StateStoreError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version TEXT NOT NULL, data TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS current_versions (name TEXT PRIMARY KEY, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (app TEXT NOT NULL, model TEXT NOT NULL,
    PRIMARY KEY (app, model));
CREATE TABLE IF NOT EXISTS policy_state (app TEXT NOT NULL, uid TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (app, uid));
CREATE TABLE IF NOT EXISTS replicas (instance_id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""


class Store(Protocol):
    """What the registry and the selection writer need of a state store: :class:`StateStore`
    (SQLite, one frontend) or :class:`~clipper_core.state_redis.RedisStateStore` (shared by
    several frontends).  Every method is synchronous and raises :class:`StateStoreError`.

    Both also record replica processes (``put_replica``, ``delete_replica``, ``replicas``:
    the supervisor's records).  A shared store also holds what the frontends of a cluster
    share: ``shared_value`` (the cluster's id and RPC keys) and the deployed files
    (``put_artifact``, ``artifact``, ``delete_artifacts``)."""

    #: True when other frontends share it (their changes arrive through ``watch``)
    shared: bool
    path: str

    def invalid(self, what: str) -> StateStoreError: ...
    def close(self) -> None: ...
    def put_app(self, name: str, data: dict, *, create: bool = False) -> None: ...
    def delete_app(self, name: str) -> None: ...
    def apps(self) -> list[dict]: ...
    def put_model(self, name: str, version: str, data: dict, *,
                  create: bool = False) -> None: ...
    def delete_model_version(self, name: str, version: str, *,
                             drop_current: bool = False) -> None: ...
    def models(self) -> list[dict]: ...
    def set_current_version(self, name: str, version: str | None) -> None: ...
    def current_versions(self) -> dict[str, str]: ...
    def add_link(self, app: str, model: str) -> None: ...
    def delete_link(self, app: str, model: str) -> None: ...
    def links(self) -> list[tuple[str, str]]: ...
    def put_policy_states(self, app: str, docs: dict[str, Any]) -> None: ...
    def policy_state(self, app: str, uid: str) -> Any: ...
    def policy_states(self, app: str, limit: int | None = None) -> dict[str, Any]: ...
    def delete_policy_states(self, app: str) -> None: ...


def open_store(state: str | None, state_dir: str) -> "Store":
    """The store ``clipper start --state`` names: None or ``sqlite`` for ``state.db`` in
    ``state_dir``, ``redis://HOST:PORT/DB`` for a store shared by several frontends."""
    if state is None or state == "sqlite":
        return StateStore(state_dir)
    if state.startswith(("redis://", "rediss://", "unix://")):
        from .state_redis import RedisStateStore

        return RedisStateStore(state)
    raise StateStoreError(f"--state {state!r} names no known state store; give 'sqlite' (the "
                          "default: state.db in --state-dir) or redis://HOST:PORT/DB")


class StateStore:
    """Thread-safe access to ``state.db``; values are JSON documents."""

    FILENAME = "state.db"
    shared = False

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, self.FILENAME)
        try:
            os.makedirs(state_dir, exist_ok=True)
        except OSError as e:
            raise StateStoreError(f"cannot create the state directory {state_dir}: {e}") from None
        self._lock = threading.Lock()
        self._db = self._open()

    def _recovery(self) -> str:
        return (f"move {self.path} aside to start with an empty state (apps and models must "
                "then be deployed again), or start with --state-dir pointing elsewhere")

    def _ran_before(self) -> bool:
        models = os.path.join(self.state_dir, "models")
        return ((os.path.isdir(models) and bool(os.listdir(models)))
                or os.path.exists(os.path.join(self.state_dir, "rpc", "server.json")))

    def _open(self) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise StateStoreError(f"the state file {self.path} is a directory, not a Clipper "
                                  f"state database; {self._recovery()}")
        if not os.path.exists(self.path):
            log.state.info("no state file at %s: starting with an empty state", self.path)
            if os.path.isdir(os.path.join(self.state_dir, "models")):
                log.state.warning("the state directory %s holds deployed models but no state "
                                  "file: apps and models must be registered again",
                                  self.state_dir)
        elif os.path.getsize(self.path) == 0 and self._ran_before():
            # SQLite takes a 0-byte file for an empty database: a truncated state file would
            # silently forget every app and model
            raise StateStoreError(f"the state file {self.path} is empty (0 bytes), but the "
                                  f"state directory shows that Clipper ran there before (it "
                                  f"holds deployed models or RPC keys): the file was truncated "
                                  f"or replaced; restore it from a backup, or "
                                  f"{self._recovery()}")
        elif not os.access(self.path, os.R_OK | os.W_OK):
            raise StateStoreError(f"the state file {self.path} is not readable and writable by "
                                  f"this user; fix its permissions or {self._recovery()}")
        db = None
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            ok = db.execute("PRAGMA quick_check").fetchone()
            if not ok or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StateStoreError(
                    f"the state file {self.path} has schema version {row[0]}, this Clipper "
                    f"reads version {SCHEMA_VERSION}; {self._recovery()}")
            return db
        except StateStoreError:
            db.close()
            raise
        except (sqlite3.Error, ValueError) as e:
            if db is not None:
                db.close()
            raise StateStoreError(
                f"the state file {self.path} is corrupted or not a Clipper state database "
                f"({e}); {self._recovery()}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -------------------------------------------------------------- generic helpers
    def _exec(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StateStoreError(f"state store at {self.path} failed: {e}") from None

    def _docs(self, sql: str, args: tuple = ()) -> Iterator[Any]:
        for row in self._exec(sql, args):
            try:
                yield json.loads(row[0])
            except (ValueError, TypeError) as e:
                raise self.invalid(f"a record is not valid JSON ({e})") from None

    def invalid(self, what: str) -> StateStoreError:
        """The error for a readable state file whose content makes no sense."""
        return StateStoreError(f"the state file {self.path} is corrupted: {what}; "
                               f"{self._recovery()}")

    # -------------------------------------------------------------- apps
    def put_app(self, name: str, data: dict, *, create: bool = False) -> None:
        # (``create``: one frontend owns this file; the registry has checked already)
        self._exec("INSERT OR REPLACE INTO apps VALUES (?, ?)", (name, json.dumps(data)))

    def delete_app(self, name: str) -> None:
        self._transaction(("DELETE FROM apps WHERE name=?", (name,)),
                          ("DELETE FROM links WHERE app=?", (name,)),
                          ("DELETE FROM policy_state WHERE app=?", (name,)))

    def _transaction(self, *statements: tuple) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    for sql, args in statements:
                        self._db.execute(sql, args)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StateStoreError(f"state store at {self.path} failed: {e}") from None

    def apps(self) -> list[dict]:
        return list(self._docs("SELECT data FROM apps ORDER BY name"))

    # -------------------------------------------------------------- models
    def put_model(self, name: str, version: str, data: dict, *,
                  create: bool = False) -> None:
        # an upsert, not INSERT OR REPLACE: the row keeps its creation time (version order)
        self._exec("INSERT INTO models (name, version, data) VALUES (?, ?, ?) "
                   "ON CONFLICT (name, version) DO UPDATE SET data = excluded.data",
                   (name, version, json.dumps(data)))

    def delete_model_version(self, name: str, version: str, *,
                             drop_current: bool = False) -> None:
        """Forget one version; ``drop_current`` also forgets the model's current version and
        its links (its last version is going)."""
        stmts: list[tuple] = [("DELETE FROM models WHERE name=? AND version=?", (name, version))]
        if drop_current:
            stmts.append(("DELETE FROM current_versions WHERE name=?", (name,)))
            stmts.append(("DELETE FROM links WHERE model=?", (name,)))
        self._transaction(*stmts)

    def models(self) -> list[dict]:
        return list(self._docs("SELECT data FROM models ORDER BY name, created, rowid"))

    def set_current_version(self, name: str, version: str | None) -> None:
        if version is None:
            self._exec("DELETE FROM current_versions WHERE name=?", (name,))
        else:
            self._exec("INSERT OR REPLACE INTO current_versions VALUES (?, ?)", (name, version))

    def current_versions(self) -> dict[str, str]:
        return dict(self._exec("SELECT name, version FROM current_versions"))

    # -------------------------------------------------------------- links
    def add_link(self, app: str, model: str) -> None:
        self._exec("INSERT OR IGNORE INTO links VALUES (?, ?)", (app, model))

    def delete_link(self, app: str, model: str) -> None:
        self._exec("DELETE FROM links WHERE app=? AND model=?", (app, model))

    def links(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self._exec("SELECT app, model FROM links ORDER BY rowid")]

    # -------------------------------------------------------------- replica processes
    def put_replica(self, instance_id: str, data: dict) -> None:
        """Remember a replica process the local manager started (to re-adopt it after a
        crash of the frontend)."""
        self._exec("INSERT OR REPLACE INTO replicas VALUES (?, ?)",
                   (instance_id, json.dumps(data)))

    def delete_replica(self, instance_id: str) -> None:
        self._exec("DELETE FROM replicas WHERE instance_id=?", (instance_id,))

    def replicas(self) -> list[dict]:
        return list(self._docs("SELECT data FROM replicas ORDER BY instance_id"))

    # -------------------------------------------------------------- policy state
    def put_policy_states(self, app: str, docs: dict[str, Any]) -> None:
        """Write many users' policy states of ``app`` in one transaction; nothing is written
        when the app no longer exists (it was deleted while the states were on their way)."""
        rows = [(app, uid, json.dumps(d), app) for uid, d in docs.items()]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO policy_state SELECT ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM apps WHERE name=?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StateStoreError(f"state store at {self.path} failed: {e}") from None

    def policy_state(self, app: str, uid: str) -> Any:
        """One user's policy state of ``app``, or None."""
        rows = self._exec("SELECT data FROM policy_state WHERE app=? AND uid=?", (app, uid))
        return json.loads(rows[0][0]) if rows else None

    def policy_states(self, app: str, limit: int | None = None) -> dict[str, Any]:
        sql = "SELECT uid, data FROM policy_state WHERE app=?"
        args: tuple = (app,)
        if limit is not None:
            # the app's own state (uid '') first, so that a limit never drops it
            sql += " ORDER BY uid != '' LIMIT ?"
            args = (app, limit)
        return {uid: json.loads(d) for uid, d in self._exec(sql, args)}

    def delete_policy_states(self, app: str) -> None:
        self._exec("DELETE FROM policy_state WHERE app=?", (app,))
