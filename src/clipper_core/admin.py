"""Admin client: ``ClipperConnection`` mirrors the original ``clipper_admin`` method names.

>>> from clipper_core.admin import ClipperConnection
>>> conn = ClipperConnection()                      # doctest: +SKIP
>>> conn.register_application("sum-app", "doubles", "0.0", 100000)      # doctest: +SKIP
>>> conn.deploy_python_closure("sum", 1, "doubles", lambda xs: [float(x.sum()) for x in xs])
...                                                  # doctest: +SKIP
>>> conn.link_model_to_app("sum-app", "sum")         # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import os
import sys
import sysconfig
import threading
import urllib.error
import urllib.request
from typing import Any, Callable

from .config import DEFAULT_MGMT_PORT
from .errors import ClipperError

DEFAULT_MANAGEMENT = f"http://127.0.0.1:{DEFAULT_MGMT_PORT}"


def _installed(module: Any) -> bool:
    """True if ``module`` comes from the standard library or an installed distribution, so a
    model container can import it by name."""
    f = getattr(module, "__file__", None)
    if not f:
        return True  # built-in
    f = os.path.realpath(f)
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(f.startswith(r + os.sep) for r in roots)


#: cloudpickle's by-value registry is process-global: deploys from several threads must not
#: register and unregister the same module under each other
_pickle_lock = threading.Lock()


def pickle_closure(func: Callable) -> bytes:
    """cloudpickle ``func``; code from the user's own modules (scripts, notebooks, test files)
    travels by value, since the container cannot import those by name.  Something it captures
    that cannot be serialised is a :class:`ClosureNotSerializable` naming it."""
    import cloudpickle

    from .pickling import unpicklable_error

    mod = sys.modules.get(getattr(func, "__module__", None) or "")
    by_value = mod is not None and mod.__name__ != "__main__" and not _installed(mod)
    with _pickle_lock:
        if by_value:
            cloudpickle.register_pickle_by_value(mod)
        try:
            return cloudpickle.dumps(func)
        except Exception as e:  # TypeError, PicklingError, RecursionError, ...
            raise unpicklable_error(func, cloudpickle.dumps, e) from e
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(mod)


class ClipperAdminError(ClipperError):
    """The management API answered with an error."""

    def __init__(self, status: int, code: str, cause: str) -> None:
        super().__init__(cause)
        self.status = status
        self.code = code


class ClipperConnection:
    """Talks to a running Clipper's management API (``http://127.0.0.1:1338`` by default)."""

    def __init__(self, management_url: str | None = None, *, token: str | None = None,
                 timeout_s: float = 120.0) -> None:
        self.url = (management_url or os.environ.get("CLIPPER_MANAGEMENT_URL")
                    or DEFAULT_MANAGEMENT).rstrip("/")
        self.token = token or os.environ.get("CLIPPER_MGMT_TOKEN")
        self.timeout_s = timeout_s

    # ---------------------------------------------------------------- transport
    def _call(self, route: str, body: dict | None = None, method: str = "POST") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/admin/{route}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)
                raise ClipperAdminError(e.code, err.get("error", "error"),
                                        err.get("cause", raw.decode(errors="replace"))) from None
            except (ValueError, AttributeError):
                raise ClipperAdminError(e.code, "http_error",
                                        raw.decode(errors="replace")) from None
        except urllib.error.URLError as e:
            raise ClipperAdminError(0, "unreachable",
                                    f"cannot reach Clipper's management API at {self.url}: "
                                    f"{e.reason} (is `clipper start` running?)") from None

    def ping(self) -> bool:
        return self._call("ping", method="GET").get("status") == "ok"

    # ---------------------------------------------------------------- applications
    def register_application(self, name: str, input_type: str, default_output: Any,
                             slo_micros: int = 100_000, *, policy: str = "single",
                             policy_params: dict | None = None,
                             cache_enabled: bool = True,
                             cache_ttl_s: float | None = None) -> dict:
        """Create an application.  ``cache_enabled`` answers repeated inputs from the
        prediction cache; ``cache_ttl_s`` (seconds) bounds the age of a cached answer."""
        return self._call("add_app", {
            "name": name, "input_type": input_type, "default_output": default_output,
            "latency_slo_micros": slo_micros, "policy": policy,
            "policy_params": policy_params or {}, "cache_enabled": cache_enabled,
            "cache_ttl_s": cache_ttl_s})["app"]

    _UNSET = object()

    def update_application(self, name: str, *, slo_micros: int | None = None,
                           default_output: Any = _UNSET, policy: str | None = None,
                           policy_params: dict | None = None,
                           cache_enabled: bool | None = None) -> dict:
        """Change what is given of an app's SLO, default output (``None`` = no default),
        policy and cache setting; the next query sees the change."""
        body: dict[str, Any] = {"name": name}
        if slo_micros is not None:
            body["latency_slo_micros"] = slo_micros
        if default_output is not self._UNSET:
            body["default_output"] = default_output
        if policy is not None:
            body["policy"] = policy
        if policy_params is not None:
            body["policy_params"] = policy_params
        if cache_enabled is not None:
            body["cache_enabled"] = cache_enabled
        return self._call("update_app", body)["app"]

    def unregister_application(self, name: str) -> None:
        """Remove an app; the models linked to it stay deployed."""
        self._call("delete_app", {"name": name})

    def set_app_policy(self, name: str, policy: str, policy_params: dict | None = None, *,
                       reset: bool = False) -> dict:
        """Change the selection policy of app ``name`` (or only its parameters: the same
        policy keeps what it learned unless ``reset``)."""
        return self._call("set_app_policy", {"name": name, "policy": policy,
                                             "policy_params": policy_params or {},
                                             "reset": reset})["app"]

    def get_app_policy(self, name: str, uid: str | None = None) -> dict:
        """The app's policy and, per linked model, its weight (the user's with ``uid``), how
        often it was selected and how much feedback it got."""
        body: dict = {"name": name}
        if uid is not None:
            body["uid"] = uid
        return self._call("get_app_policy", body)

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        self._call("add_model_links", {"app_name": app_name, "model_names": [model_name]})

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._call("delete_model_links", {"app_name": app_name, "model_names": [model_name]})

    def get_linked_models(self, app_name: str) -> list:
        return self._call("get_linked_models", {"app_name": app_name})

    def get_all_apps(self, verbose: bool = False) -> list:
        return self._call("get_all_applications", {"verbose": verbose})

    def get_app_info(self, name: str) -> dict:
        info = self._call("get_application", {"name": name})
        if not info:  # the route answers {} for an unknown app, as the original did
            raise ClipperAdminError(404, "unknown_app", f"no application named {name!r}")
        return info

    # ---------------------------------------------------------------- models
    def deploy_python_closure(self, name: str, version: Any, input_type: str,
                              func: Callable[[list], list], num_replicas: int = 1,
                              batch_size: int = -1, labels: list | None = None,
                              gpus: list | None = None, *, warmup_input: Any = None,
                              ready_timeout_s: float | None = None, cpus: float | None = None,
                              memory: int | str | None = None,
                              constraints: list | None = None) -> dict:
        """Serialise ``func`` (and what it captures) with cloudpickle and run it as
        ``num_replicas`` replicas.

        Returns once a replica has registered and answered a warm-up call (``warmup_input``,
        one input as the query API takes it, when given; else a protocol-level probe that
        does not call the model); only then does this version become current, so the
        previous one serves until that moment.  A failed deploy changes nothing."""
        blob = base64.b64encode(pickle_closure(func)).decode()
        body: dict[str, Any] = {
            "model_name": name, "model_version": str(version), "input_type": input_type,
            "closure": blob, "num_replicas": num_replicas, "batch_size": batch_size,
            "labels": labels or [], "gpus": gpus or []}
        _options(body, warmup_input, ready_timeout_s, cpus, memory, constraints)
        return self._call("deploy_python_closure", body)["model"]

    def deploy_image(self, name: str, version: Any, input_type: str, image: str,
                     num_replicas: int = 1, batch_size: int = -1, labels: list | None = None,
                     gpus: list | None = None, *, warmup_input: Any = None,
                     ready_timeout_s: float | None = None, cpus: float | None = None,
                     memory: int | str | None = None,
                     constraints: list | None = None) -> dict:
        """Run a container image as a model version (the docker backend).  The image is one
        of yours built on Clipper's base image (see :meth:`build_and_deploy_model`), whose
        entrypoint serves with ``clipper_rpc.serve``; it finds the frontend through the
        ``CLIPPER_ADDRESS`` and ``CLIPPER_INSTANCE_ID`` variables every replica gets."""
        body: dict[str, Any] = {
            "model_name": name, "model_version": str(version), "input_type": input_type,
            "image": image, "num_replicas": num_replicas, "batch_size": batch_size,
            "labels": labels or [], "gpus": gpus or []}
        _options(body, warmup_input, ready_timeout_s, cpus, memory, constraints)
        return self._call("deploy_image", body)["model"]

    def build_and_deploy_model(self, name: str, version: Any, input_type: str,
                               model_data_path: str, base_image: str | None = None,
                               pkgs_to_install: list | None = None, **kw: Any) -> dict:
        """Build an image holding the directory ``model_data_path`` (at ``/model``) and the
        Python packages ``pkgs_to_install`` on ``base_image`` (default: Clipper's runtime
        image), offline: the packages are wheels downloaded here, installed inside
        ``docker build --network none``.  The Docker Engine is the one of this machine, so
        call it where the frontend runs.  Then :meth:`deploy_image` it (``kw`` goes there);
        ``base_image`` must bring an entrypoint that serves the model."""
        from .containers import images
        from .containers.docker import connect

        client = connect()
        try:
            tag = images.build_model_image(client, name, str(version), model_data_path,
                                           base_image, tuple(pkgs_to_install or ()))
        finally:
            client.close()
        return self.deploy_image(name, version, input_type, tag, **kw)

    def get_logs(self, name: str, version: Any = None, tail: int = 200) -> list:
        """The last ``tail`` log lines of each replica of a model (one version, or all)."""
        body: dict[str, Any] = {"model_name": name, "tail": tail}
        if version is not None:
            body["model_version"] = str(version)
        return self._call("get_replica_logs", body)["replicas"]

    def deploy_model(self, name: str, version: Any, input_type: str, framework: str,
                     artifact: bytes, artifact_format: str | None = None,
                     options: dict | None = None, *, num_replicas: int = 1,
                     batch_size: int = -1, labels: list | None = None,
                     gpus: list | None = None, warmup_input: Any = None,
                     ready_timeout_s: float | None = None, cpus: float | None = None,
                     memory: int | str | None = None) -> dict:
        """Send a model file in its framework's format (``artifact``: its bytes) and run it
        with the ready-made runtime of ``framework``; ``options`` are the runtime's (method,
        input_shape, dtype, input, output, classes).  The ``clipper_core.deployers`` save a
        fitted model and call this.  Warm-up and failure as for
        :meth:`deploy_python_closure`."""
        body: dict[str, Any] = {
            "model_name": name, "model_version": str(version), "input_type": input_type,
            "framework": framework, "artifact": base64.b64encode(artifact).decode(),
            "options": options or {}, "num_replicas": num_replicas,
            "batch_size": batch_size, "labels": labels or [], "gpus": gpus or []}
        if artifact_format is not None:
            body["artifact_format"] = artifact_format
        _options(body, warmup_input, ready_timeout_s, cpus, memory)
        return self._call("deploy_model", body)["model"]

    def register_model(self, name: str, version: Any, input_type: str, batch_size: int = -1,
                       labels: list | None = None) -> dict:
        """Register a model whose replicas you start yourself (``clipper_rpc.serve``)."""
        return self._call("add_model", {"model_name": name, "model_version": str(version),
                                        "input_type": input_type, "batch_size": batch_size,
                                        "labels": labels or []})["model"]

    def set_model_version(self, name: str, version: Any) -> dict:
        """Make ``version`` current (rollback, roll-forward); instantaneous."""
        return self._call("set_model_version",
                          {"model_name": name, "model_version": str(version)})["model"]

    def set_num_replicas(self, name: str, num_replicas: int, version: Any = None) -> dict:
        """Scale a model version (default: the current one); scaling down drains each
        stopped replica's batch in flight first."""
        body = {"model_name": name, "num_replicas": num_replicas}
        if version is not None:
            body["model_version"] = str(version)
        return self._call("set_num_replicas", body)["model"]

    def set_batching(self, name: str, version: Any = None, *, batch_size: int | None = None,
                     batch_wait_ms: float | None = ..., max_in_flight: int | None = None,
                     aimd_step: int | None = None, aimd_backoff: float | None = None,
                     aimd_cap: int | None = None, aimd_initial: int | None = None,
                     budget_fraction: float | None = None,
                     rpc_timeout_ms: float | None = ...) -> dict:
        """Change a model version's batching at run time; parameters left out stay as they
        are.  ``batch_size=-1`` is adaptive (AIMD), ``N`` a fixed maximum.  ``batch_wait_ms``
        and ``rpc_timeout_ms`` accept None: derive them from the SLO / measured latency.
        Returns the new batching configuration."""
        body: dict = {"model_name": name}
        if version is not None:
            body["model_version"] = str(version)
        for k, v in (("batch_size", batch_size), ("max_in_flight", max_in_flight),
                     ("aimd_step", aimd_step), ("aimd_backoff", aimd_backoff),
                     ("aimd_cap", aimd_cap), ("aimd_initial", aimd_initial),
                     ("budget_fraction", budget_fraction)):
            if v is not None:
                body[k] = v
        for k, v in (("batch_wait_ms", batch_wait_ms), ("rpc_timeout_ms", rpc_timeout_ms)):
            if v is not ...:
                body[k] = v
        return self._call("set_batching", body)["batching"]

    def get_batching(self, name: str, version: Any = None, *,
                     recent_batches: bool = False) -> dict:
        """The batching configuration and the scheduler's counters of a model version: queue
        depth, admitted / shed / expired counts, per-replica AIMD batch size and latency, and
        count+sum statistics; ``recent_batches`` adds the latest [size, latency_s] pairs."""
        body: dict = {"model_name": name, "recent_batches": recent_batches}
        if version is not None:
            body["model_version"] = str(version)
        return self._call("get_batching", body)

    def delete_versioned_model(self, name: str, version: Any) -> dict:
        """Stop the replicas of one model version and forget it."""
        return self._call("delete_versioned_model",
                          {"model_name": name, "model_version": str(version)})["model"]

    def stop_inactive_model_versions(self, model_names: list[str]) -> list[str]:
        """Stop and forget every non-current version of the named models; returns the
        ``name:version`` of each."""
        return self._call("stop_inactive_model_versions",
                          {"model_names": list(model_names)})["stopped"]

    def get_all_models(self, verbose: bool = False) -> list:
        return self._call("get_all_models", {"verbose": verbose})

    def get_model_info(self, name: str, version: Any = None) -> dict:
        body = {"model_name": name}
        if version is not None:
            body["model_version"] = str(version)
        info = self._call("get_model", body)
        if not info:  # the route answers {} for an unknown model, as the original did
            raise ClipperAdminError(404, "unknown_model", f"No model with name {name!r}"
                                    + ("" if version is None else f" and version {version}"))
        return info

    def get_all_model_replicas(self, verbose: bool = False) -> list:
        return self._call("get_all_containers", {"verbose": verbose})

    def server_info(self) -> dict:
        return self._call("server_info", method="GET")


def _options(body: dict, warmup_input: Any, ready_timeout_s: Any, cpus: Any,
             memory: Any, constraints: Any = None) -> None:
    for k, v in (("warmup_input", warmup_input), ("ready_timeout_s", ready_timeout_s),
                 ("cpus", cpus), ("memory", memory), ("constraints", constraints)):
        if v is not None:
            body[k] = v
