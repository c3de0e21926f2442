"""Apps, models, versions and links: validated, kept in memory, persisted in the state store.

The management API changes the registry; the query path reads it.  Every change is written to
the state store before it becomes visible, so a crash never loses an acknowledged change.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Callable

from .config import AppConfig, ModelVersion, check_name, check_version
from .errors import (ClipperError, Conflict, ConfigError, StateStoreError, UnknownApp,
                     UnknownModel, UnknownVersion)
from .state import Store

ModelKey = tuple


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.RLock()
        self.apps: dict[str, AppConfig] = {}
        self.models: dict[ModelKey, ModelVersion] = {}
        self.current: dict[str, str] = {}
        self.links: dict[str, list[str]] = {}
        #: called with the names of apps whose routing may have changed
        self.listeners: list[Callable[[str, Any], None]] = []
        self._load()

    def _load(self) -> None:
        try:
            self._load_records()
        except StateStoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ClipperError) as e:
            what = e.cause if isinstance(e, ClipperError) else f"{type(e).__name__}: {e}"
            raise self.store.invalid(f"a record does not describe a valid app or model "
                                     f"({what})") from None

    def _load_records(self) -> None:
        for d in self.store.apps():
            app = AppConfig(d["name"], d["input_type"], d.get("default_output"),
                            d["latency_slo_micros"], d.get("policy", "single"),
                            d.get("policy_params", {}), d.get("cache_enabled", True),
                            d.get("cache_ttl_s"))
            self.apps[app.name] = app
        for d in self.store.models():
            mv = ModelVersion(d["model_name"], d["model_version"], d["input_type"],
                              d.get("batch_size", -1), tuple(d.get("labels", ())),
                              d.get("runtime", {"kind": "external"}), d.get("num_replicas", 1),
                              tuple(d.get("gpus", ())))
            self.models[mv.key] = mv
        self.current = {n: v for n, v in self.store.current_versions().items()
                        if (n, v) in self.models}
        for app, model in self.store.links():
            self.links.setdefault(app, []).append(model)

    def reload(self) -> dict[str, set]:
        """Read everything again from the store (another frontend changed it); emits
        ``reloaded`` with, and returns, what changed: ``apps`` (added or changed, links
        included), ``apps_deleted``, ``models`` (names whose versions, settings or current
        version changed)."""
        with self._lock:
            before = (dict(self.apps), dict(self.models), dict(self.current),
                      {a: list(ms) for a, ms in self.links.items()})
            fresh = Registry.__new__(Registry)
            fresh.store = self.store
            fresh.apps, fresh.models, fresh.current, fresh.links = {}, {}, {}, {}
            fresh._load()
            for name in fresh.apps:
                fresh.links.setdefault(name, [])
            self.apps, self.models = fresh.apps, fresh.models
            self.current, self.links = fresh.current, fresh.links
        apps0, models0, current0, links0 = before
        changed = {
            "apps": {n for n, a in self.apps.items()
                     if apps0.get(n) != a or links0.get(n) != self.links.get(n)},
            "apps_deleted": set(apps0) - set(self.apps),
            "models": ({n for (n, _), m in self.models.items() if models0.get(m.key) != m}
                       | {n for (n, _) in set(models0) - set(self.models)}
                       | {n for n in set(current0) | set(self.current)
                          if current0.get(n) != self.current.get(n)})}
        self._emit("reloaded", changed)
        return changed

    def _emit(self, event: str, arg: Any) -> None:
        for fn in self.listeners:
            fn(event, arg)

    # ---------------------------------------------------------------- apps
    def add_app(self, app: AppConfig) -> AppConfig:
        with self._lock:
            if app.name in self.apps:
                raise Conflict(f"application {app.name!r} already exists")
            self.store.put_app(app.name, app.to_json(), create=True)
            self.apps[app.name] = app
            self.links.setdefault(app.name, [])
        self._emit("app", app.name)
        return app

    def update_app(self, name: str, **changes: Any) -> AppConfig:
        """Change an app's SLO, default output, policy or cache setting (not its input
        type: its linked models take that type)."""
        with self._lock:
            old = self.get_app(name)
            if "input_type" in changes and changes["input_type"] != old.input_type:
                raise ConfigError(f"the input type of app {name!r} cannot change (it is "
                                  f"{old.input_type}); register a new app instead")
            app = replace(old, **changes)
            if app.policy == "single" and len(self.links.get(name, [])) > 1:
                raise ConfigError(f"app {name!r} links {len(self.links[name])} models; "
                                  "policy 'single' serves one")
            self.store.put_app(name, app.to_json())
            self.apps[name] = app
        self._emit("app", name)
        return app

    def delete_app(self, name: str) -> None:
        with self._lock:
            self.get_app(name)
            self.store.delete_app(name)
            del self.apps[name]
            self.links.pop(name, None)
        self._emit("app_deleted", name)

    def get_app(self, name: str) -> AppConfig:
        app = self.apps.get(name)
        if app is None:
            raise UnknownApp(f"no application named {name!r}; known: "
                             f"{', '.join(sorted(self.apps)) or 'none'}")
        return app

    # ---------------------------------------------------------------- models
    def add_model(self, mv: ModelVersion, make_current: bool = True) -> ModelVersion:
        with self._lock:
            if mv.key in self.models:
                raise Conflict(f"model {mv.name!r} version {mv.version!r} already exists")
            others = [m for (n, _), m in self.models.items() if n == mv.name]
            if others and others[0].input_type != mv.input_type:
                raise ConfigError(f"model {mv.name!r} has input_type {others[0].input_type}; "
                                  f"version {mv.version!r} declares {mv.input_type}")
            self.store.put_model(mv.name, mv.version, mv.to_json(), create=True)
            self.models[mv.key] = mv
            if make_current or mv.name not in self.current:
                self.store.set_current_version(mv.name, mv.version)
                self.current[mv.name] = mv.version
        self._emit("model", mv.name)
        return mv

    def update_model(self, key: ModelKey, **changes: Any) -> ModelVersion:
        with self._lock:
            mv = replace(self.get_model(*key), **changes)
            self.store.put_model(mv.name, mv.version, mv.to_json())
            self.models[mv.key] = mv
        self._emit("model", mv.name)
        return mv

    def versions(self, name: str) -> list[str]:
        return [v for (n, v) in self.models if n == name]

    def get_model(self, name: str, version: str | None = None) -> ModelVersion:
        if version is None:
            version = self.current.get(name)
            if version is None:
                raise UnknownModel(f"No model with name {name!r} exists; known: "
                                   f"{', '.join(sorted({n for n, _ in self.models})) or 'none'}")
        mv = self.models.get((name, version))
        if mv is None:
            vs = self.versions(name)
            if not vs:
                raise UnknownModel(f"No model with name {name!r} exists")
            # the original Clipper's wording, which its users' scripts match on
            raise UnknownVersion(f"Requested version: {version} does not exist for model: "
                                 f"{name}; versions: {', '.join(vs)}")
        return mv

    def check_delete(self, name: str, version: str) -> None:
        """Raise Conflict if version ``version`` of ``name`` may not be deleted now."""
        mv = self.get_model(name, check_version(version))
        if self.current.get(name) != mv.version:
            return
        if len(self.versions(name)) > 1:
            raise Conflict(f"version {mv.version!r} is the current version of model {name!r}; "
                           "make another version current first (set_model_version)")
        apps = self.apps_of_model(name)
        if apps:
            raise Conflict(f"model {name!r} is linked to {', '.join(sorted(apps))}; unlink it "
                           "before deleting its last version")

    def delete_version(self, name: str, version: str, *, force: bool = False) -> ModelVersion:
        """Forget one version of a model.  The current version can go only when it is the
        last one and no app links the model (or with ``force``, used to undo a failed
        deploy: then the links go too)."""
        with self._lock:
            mv = self.get_model(name, check_version(version))
            last = len(self.versions(name)) == 1
            if not force:
                self.check_delete(name, mv.version)
            self.store.delete_model_version(name, mv.version, drop_current=last)
            del self.models[mv.key]
            if last:
                self.current.pop(name, None)
                for app, models in self.links.items():
                    if name in models:
                        models.remove(name)
            elif self.current.get(name) == mv.version:  # forced: fall back to the newest other
                other = self.versions(name)[-1]
                self.store.set_current_version(name, other)
                self.current[name] = other
        self._emit("model", name)
        return mv

    def set_current_version(self, name: str, version: str) -> None:
        with self._lock:
            version = check_version(version)
            self.get_model(name, version)
            self.store.set_current_version(name, version)
            self.current[name] = version
        self._emit("model", name)

    # ---------------------------------------------------------------- links
    def link(self, app_name: str, model_name: str) -> None:
        with self._lock:
            app = self.get_app(app_name)
            check_name(model_name, "model name")
            mv = self.get_model(model_name)
            if mv.input_type != app.input_type:
                raise ConfigError(f"model {model_name!r} takes {mv.input_type} but app "
                                  f"{app_name!r} takes {app.input_type}")
            if model_name in self.links.get(app_name, []):
                return
            if app.policy == "single" and self.links.get(app_name):
                raise ConfigError(
                    f"app {app_name!r} already links {self.links[app_name][0]!r} and its "
                    "policy 'single' serves one model; unlink it first or choose a policy "
                    "that combines models")
            self.store.add_link(app_name, model_name)
            self.links.setdefault(app_name, []).append(model_name)
        self._emit("app", app_name)

    def unlink(self, app_name: str, model_name: str) -> None:
        with self._lock:
            self.get_app(app_name)
            if model_name not in self.links.get(app_name, []):
                raise UnknownModel(f"model {model_name!r} is not linked to app {app_name!r}")
            self.store.delete_link(app_name, model_name)
            self.links[app_name].remove(model_name)
        self._emit("app", app_name)

    def apps_of_model(self, model_name: str) -> list[str]:
        return [a for a, ms in self.links.items() if model_name in ms]

    def slo_s_of_model(self, model_name: str) -> float:
        """The tightest SLO of the apps a model serves (its batches must fit every one)."""
        slos = [self.apps[a].slo_micros for a in self.apps_of_model(model_name)
                if a in self.apps]
        return (min(slos) if slos else 100_000) / 1e6
