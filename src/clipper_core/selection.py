"""The selection layer at run time: each application's policy instances, their persistence and
their counters.

One :class:`AppSelection` per application holds the app-level policy instance and, for a
``personalized`` policy, one instance per user (``uid``) that has given feedback.  A user
without state of their own is served by the app-level instance; their first feedback gives
them a copy of it, which then learns from their feedback only (the app-level instance learns
from everyone's).  At most ``max_users`` user instances stay in memory (least recently used
first out); the others live in the state store and come back on their next query.

Learning changes state in memory only; :class:`Selection` writes what changed to the state
store in one transaction every ``flush_interval_s`` (and on shutdown), never on the query path.
A crash loses at most that much learning.  With a store shared by several frontends each write
adds this frontend's change to what the others wrote (:func:`merge_state`).
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from typing import Any, Callable, Sequence

from . import log
from .config import AppConfig
from .errors import ClipperError
from .policies import Policy, load_policy
from .state import Store
from .tasks import cancel_and_wait

#: the state-store uid of an app's own (not per-user) policy state
APP_UID = ""


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def merge_state(stored: Any, base: Any, mine: Any) -> Any:
    """How several frontends' learning combines in a shared store: every number in ``mine``
    adds its change since ``base`` (what this frontend last read or wrote) to the ``stored``
    one; a number this frontend never read, and anything else (strings, lists, a different
    policy), takes ``mine``; keys only the stored document has stay.

    Exact for what is a sum of per-feedback terms: the counters, and exp3/exp4 log-weights
    (their weights do not change when every log-weight shifts by one constant) up to the
    ``min_weight`` floor those policies mix in; for other numbers the sum of changes
    approximates the result of seeing all the feedback in one place."""
    if isinstance(mine, dict) and isinstance(stored, dict):
        if "policy" in mine and stored.get("policy") != mine.get("policy"):
            return mine
        b = base if isinstance(base, dict) else {}
        out = dict(stored)
        for k, v in mine.items():
            out[k] = merge_state(stored.get(k), b.get(k), v)
        return out
    if _num(mine) and _num(stored) and _num(base):
        return stored + (mine - base)
    return mine
MAX_UID_CHARS = 256


class AppSelection:
    """An application's policy: instances, per-user states, counters."""

    def __init__(self, app: AppConfig, store: Store | None, max_users: int,
                 previous: "AppSelection | None" = None, keep_state: bool = False) -> None:
        """``previous``: the app's selection before its policy changed; its counters carry
        over, and with ``keep_state`` (same policy, new params) its learned states too."""
        self.config = app
        self.name = app.name
        self.store = store
        self.max_users = max_users
        self.error: str | None = None
        self.users: OrderedDict[str, Policy] = OrderedDict()
        self.dirty: dict[str, Policy] = {}
        #: (shared stores) each state as this frontend last read or wrote it: the base of
        #: the change its next write adds (see :func:`merge_state`)
        self.base: dict[str, Any] = {}
        #: True while every stored user state is in memory (a miss then needs no store read)
        self.complete = True
        # counters for the metrics layer
        self.selected: dict[str, int] = {}
        self.feedback = 0
        self.feedback_by_model: dict[str, int] = {}
        self.loss_sum: dict[str, float] = {}
        self.errors = 0
        self.personalized = False
        #: the counters as last written to the store (None: never, write them)
        self._counts_written: tuple | None = None
        if previous is not None:
            self.selected = previous.selected
            self.feedback = previous.feedback
            self.feedback_by_model = previous.feedback_by_model
            self.loss_sum = previous.loss_sum
            if keep_state:  # the stored state stays, and with it the counters
                self._counts_written = previous._counts_written
        try:
            self.cls = load_policy(app.policy)
            params = dict(app.policy_params)
            seed = params.get("seed")
            self.rng = random.Random(seed)
            self.policy = self._new()
        except ClipperError as e:
            # the app was stored with a policy this process cannot load (a user module that
            # is gone): its queries get the default output with this explanation
            self.error = f"the app's policy cannot be loaded: {e.cause}"
            self.cls = Policy
            self.rng = random.Random()
            self.policy = Policy({}, self.rng)
            log.server.error("app %s: %s", app.name, self.error)
            return
        self.personalized = bool(self.cls.personalized)
        if keep_state and previous is not None and previous.error is None:
            self._take_over(previous)
        else:
            self._load(restore_counts=previous is None)

    def _take_over(self, old: "AppSelection") -> None:
        """Carry the learned states over in memory (the store may still be receiving them)."""
        def copy(p: Policy) -> Policy:
            q = self._new()
            self._restore(q, old._wrap(p))
            return q

        self.policy = copy(old.policy)
        if APP_UID in old.dirty:
            self.dirty[APP_UID] = self.policy
        if self.personalized:
            for uid, p in old.users.items():
                self.users[uid] = copy(p)
            for uid, p in old.dirty.items():
                if uid != APP_UID:
                    self.dirty[uid] = self.users.get(uid) or copy(p)
        self.complete = old.complete

    def _new(self) -> Policy:
        return self.cls(dict(self.config.policy_params), self.rng)

    # ---------------------------------------------------------------- persistence
    def _wrap(self, p: Policy) -> Any:
        return {"policy": self.config.policy, "state": p.to_state()}

    def _restore(self, p: Policy, doc: Any) -> bool:
        if not isinstance(doc, dict) or doc.get("policy") != self.config.policy:
            return False
        try:
            p.from_state(doc.get("state"))
            return True
        except Exception as e:  # a user policy that cannot read its own old state
            log.state.error("app %s: policy state not restored (%s: %s); starting afresh",
                            self.name, type(e).__name__, e)
            return False

    def _load(self, restore_counts: bool = True) -> None:
        if self.store is None:
            return
        docs = self.store.policy_states(self.name, limit=self.max_users + 2)
        if self.store.shared:
            self.base.update(docs)
        app_doc = docs.pop(APP_UID, None)
        if app_doc is not None:
            self._restore(self.policy, app_doc)
            if restore_counts:
                self._restore_counts(app_doc)
        if restore_counts:
            self._counts_written = self._counts_mark()
        if not self.personalized:
            return
        for uid, doc in docs.items():
            if len(self.users) >= self.max_users:
                self.complete = False
                break
            p = self._new()
            if self._restore(p, doc):
                self.users[uid] = p

    def _counts_mark(self) -> tuple:
        return (self.feedback, sum(self.selected.values()), len(self.selected))

    def counts_changed(self) -> bool:
        """True when the selected/feedback counters moved since they were last written (never
        for a policy that could not be loaded: its stored state must stay as it is)."""
        return self.error is None and self._counts_mark() != self._counts_written

    def _restore_counts(self, doc: dict) -> None:
        """The counters kept with the app's state (``selected`` and ``feedback`` per model),
        so that a restart does not look as if no feedback was ever received."""
        c = doc.get("counts")
        if not isinstance(c, dict):
            return  # written before the counters were kept

        def numbers(d: Any, typ: type) -> dict:
            if not isinstance(d, dict):
                return {}
            return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, typ)
                    and not isinstance(v, bool)}

        fb = c.get("feedback")
        self.feedback = fb if isinstance(fb, int) and not isinstance(fb, bool) else 0
        self.selected = numbers(c.get("selected"), int)
        self.feedback_by_model = numbers(c.get("feedback_by_model"), int)
        self.loss_sum = {k: float(v) for k, v in
                         numbers(c.get("loss_sum"), (int, float)).items()}

    def written(self, merged: dict[str, Any], exported: dict[str, Any]) -> None:
        """(Shared stores) ``exported`` was merged into the store as ``merged``: adopt the
        merged states that learned nothing since, and remember what each change is based on."""
        for uid, doc in merged.items():
            if uid in self.dirty:  # learned more meanwhile: its next change is from this
                self.base[uid] = exported[uid]
                continue
            p = self.policy if uid == APP_UID else self.users.get(uid)
            if p is None or not self._restore(p, doc):
                self.base[uid] = exported[uid]
                continue
            self.base[uid] = doc
            if uid == APP_UID:
                self._restore_counts(doc)
                self._counts_written = self._counts_mark()

    def export(self) -> dict[str, Any]:
        """The dirty states as state-store documents (the app's own carries the counters);
        they count as written from now on."""
        if self.counts_changed() and not (self.store is not None and self.store.shared):
            # (a shared store gets the app's state only with new feedback: counting
            # selections alone must not write this frontend's copy over another's learning)
            self.dirty.setdefault(APP_UID, self.policy)
        out = {uid: self._wrap(p) for uid, p in self.dirty.items()}
        if APP_UID in out:
            out[APP_UID]["counts"] = {
                "selected": dict(self.selected), "feedback": self.feedback,
                "feedback_by_model": dict(self.feedback_by_model),
                "loss_sum": dict(self.loss_sum)}
            self._counts_written = self._counts_mark()
        self.dirty.clear()
        return out

    # ---------------------------------------------------------------- instances
    def _user(self, uid: str, create: bool) -> Policy | None:
        p = self.users.get(uid)
        if p is not None:
            self.users.move_to_end(uid)
            return p
        p = self.dirty.get(uid)
        if p is None and not self.complete and self.store is not None:
            doc = self.store.policy_state(self.name, uid)
            if doc is not None and self.store.shared:
                self.base[uid] = doc
            if doc is not None:
                p = self._new()
                if not self._restore(p, doc):
                    p = None
        if p is None:
            if not create:
                return None
            p = self._new()  # the user's first feedback: start from the app's state
            self._restore(p, self._wrap(self.policy))
        self.users[uid] = p
        if len(self.users) > self.max_users:
            self.users.popitem(last=False)  # still in ``dirty`` until written, if unwritten
            self.complete = False
        return p

    def for_uid(self, uid: str | None) -> Policy:
        """The instance that serves a query from ``uid``."""
        if uid is None or not self.personalized:
            return self.policy
        return self._user(uid, create=False) or self.policy

    def count_selected(self, model: str, n: int = 1) -> None:
        self.selected[model] = self.selected.get(model, 0) + n

    def observe(self, uid: str | None, models: Sequence[str], preds: dict[str, Any],
                label: Any) -> dict[str, float]:
        """Learn from feedback; returns each observed model's loss."""
        losses = {m: self.policy.loss(p, label) for m, p in preds.items()}
        self.feedback += 1
        for m, lo in losses.items():
            self.feedback_by_model[m] = self.feedback_by_model.get(m, 0) + 1
            self.loss_sum[m] = self.loss_sum.get(m, 0.0) + lo
        self.policy.observe(models, preds, label)
        self.dirty[APP_UID] = self.policy
        if uid is not None and self.personalized:
            p = self._user(uid, create=True)
            p.observe(models, preds, label)
            self.dirty[uid] = p
        return losses

    def snapshot(self, models: Sequence[str], uid: str | None = None) -> dict:
        """Counters and weights for metrics and the admin API."""
        p = self.for_uid(uid)
        try:
            weights = p.weights(list(models))
        except Exception as e:
            weights = {}
            log.server.error("app %s: policy weights failed: %s", self.name, e)
        per_model = {}
        for m in dict.fromkeys([*models, *self.selected, *self.feedback_by_model]):
            n = self.feedback_by_model.get(m, 0)
            per_model[m] = {"selected": self.selected.get(m, 0), "weight": weights.get(m),
                            "feedback": n,
                            "mean_loss": self.loss_sum.get(m, 0.0) / n if n else None}
        return {"policy": self.config.policy, "policy_params": self.config.policy_params,
                "error": self.error, "models": per_model, "feedback": self.feedback,
                "users_in_memory": len(self.users), "policy_errors": self.errors,
                "uid": uid}


class Selection:
    """All applications' :class:`AppSelection`, and the writer that persists their state."""

    def __init__(self, store: Store | None, *, max_users: int = 50_000,
                 flush_interval_s: float = 1.0) -> None:
        self.store = store
        self.max_users = max_users
        self.flush_interval_s = flush_interval_s
        self.apps: dict[str, AppSelection] = {}
        self._task: asyncio.Task | None = None
        self._flushing: asyncio.Lock | None = None
        #: apps forgotten (reset, policy replaced, deleted) while a write was on its way
        self._deleted: set[str] = set()

    def get(self, app: AppConfig, reset: bool = False) -> AppSelection:
        """The app's selection; rebuilt when the app's policy or params changed (the same
        policy with new params keeps what it learned; another policy, or ``reset``, starts
        afresh).  Counters always carry over."""
        s = self.apps.get(app.name)
        if s is not None and not reset:
            if s.config is app:
                return s
            if (s.config.policy, s.config.policy_params) == (app.policy, app.policy_params):
                s.config = app  # another field of the app changed (SLO, default)
                return s
        keep = not reset and s is not None and s.config.policy == app.policy
        if reset or (s is not None and not keep):
            self._drop_stored(app.name)
        new = AppSelection(app, self.store, self.max_users, previous=s, keep_state=keep)
        self.apps[app.name] = new
        return new

    def forget(self, name: str) -> None:
        """The app is gone: drop its policy state from memory and from the store."""
        self.apps.pop(name, None)
        self._drop_stored(name)

    def reload(self, name: str) -> bool:
        """Another frontend wrote the app's policy state (or changed its policy): drop this
        frontend's copy, so that the next query reads the stored one.  A copy holding
        feedback not yet written stays (its write, within ``flush_interval_s``, adds its
        change to the stored state and adopts the sum).  True when dropped."""
        s = self.apps.get(name)
        if s is None:
            return False
        if s.dirty:
            return False
        del self.apps[name]
        return True

    def drop_local(self, name: str) -> None:
        """Forget the app's selection in memory only (another frontend deleted the app and
        its stored state, or changed its policy)."""
        self.apps.pop(name, None)

    def _drop_stored(self, name: str) -> None:
        self._deleted.add(name)
        if self.store is not None:
            self.store.delete_policy_states(name)

    # ---------------------------------------------------------------- writer
    async def flush(self, exists: Callable[[str], bool] | None = None) -> int:
        """Write every dirty state; returns how many were written."""
        if self.store is None:
            return 0
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            self._deleted.clear()
            batches = [(s.name, s.export()) for s in list(self.apps.values())
                       if (s.dirty or s.counts_changed())
                       and (exists is None or exists(s.name))]
            batches = [(n, d) for n, d in batches if d]
            if not batches:
                return 0
            try:
                bases = [{uid: self.apps[n].base.get(uid) for uid in d}
                         if self.store.shared and n in self.apps else {} for n, d in batches]
                merged = await asyncio.to_thread(self._write, batches, bases)
            except ClipperError as e:
                log.state.error("policy state not written (will retry): %s", e.cause)
                for name, docs in batches:  # keep them dirty for the next try
                    s = self.apps.get(name)
                    if s is not None:
                        for uid in docs:
                            p = s.users.get(uid) or (s.policy if uid == APP_UID else None)
                            if p is not None:
                                s.dirty.setdefault(uid, p)
                return 0
            for (name, docs), m in zip(batches, merged):
                s = self.apps.get(name)
                if m is not None and s is not None:
                    s.written(m, docs)
            for name in self._deleted.intersection(n for n, _ in batches):
                # the app's state was reset while this write was on its way: undo it
                self.store.delete_policy_states(name)
            return sum(len(d) for _, d in batches)

    def _write(self, batches: list, bases: list) -> list:
        """Write the batches; for a shared store, merge them into what other frontends
        wrote (see :func:`merge_state`) and return the merged documents."""
        if not self.store.shared:
            for name, docs in batches:
                self.store.put_policy_states(name, docs)
            return [None] * len(batches)
        return [self.store.merge_policy_states(
                    name, {uid: (base.get(uid), d) for uid, d in docs.items()}, merge_state)
                for (name, docs), base in zip(batches, bases)]

    def start(self, exists: Callable[[str], bool] | None = None) -> None:
        async def run() -> None:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                try:
                    # shielded: a write under way finishes even when close() cancels the loop
                    # (close's own flush then waits for it)
                    await asyncio.shield(self.flush(exists))
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the writer die
                    log.state.exception("policy state writer failed")

        self._task = asyncio.ensure_future(run())

    async def close(self, exists: Callable[[str], bool] | None = None) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.flush(exists)

    def snapshot(self, links: dict[str, list[str]]) -> dict[str, dict]:
        """Per app and model: selections, weight, feedback counts (for the metrics layer)."""
        return {name: s.snapshot(links.get(name, [])) for name, s in self.apps.items()}
