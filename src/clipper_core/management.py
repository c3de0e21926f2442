"""The management API (default port 1338, bound to 127.0.0.1): Clipper-compatible routes.

Handlers validate the body, call one ClipperServer operation and answer JSON.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import BadRequest, Unauthorized
from .predict import check_uid
from .http import MAX_BODY, error_middleware, field, json_object, json_response, read_json
from . import cache, dashboard, frontend, legacy_routes, mgmt_guard, openapi, sched
from .mgmt_guard import allow_hosts  # noqa: F401  (the server calls it once bound)
from .sched import COMPILED

if TYPE_CHECKING:
    from .deployment import DeploymentController
    from .server import ClipperServer

SERVER = web.AppKey("server", object)
TOKEN = web.AppKey("token", str)

routes = web.RouteTableDef()


def _server(request: web.Request) -> "ClipperServer":
    return request.app[SERVER]


def _deployments(request: web.Request) -> "DeploymentController":
    return request.app[SERVER].deployments


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    return json_object(await read_json(request))


def _verbose(body: dict) -> bool:
    return bool(field(body, "verbose", bool, required=False, default=False))


def _str_list(body: dict, name: str, *, required: bool = True, nonempty: bool = True) -> list:
    val = field(body, name, list, required=required, default=[])
    if required and nonempty and not val:
        raise BadRequest(f"field {name!r} must be a non-empty list of strings")
    for i, v in enumerate(val):
        if not isinstance(v, str):
            raise BadRequest(f"field {name!r} must be a list of strings, item {i} is "
                             f"{type(v).__name__}")
    return val


def _version(body: dict, required: bool = True) -> str | None:
    v = field(body, "model_version", (str, int), required=required)
    return None if v is None else str(v)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """This frontend's own figures, as on the query port (where, with --reuse-port, a request
    reaches whichever frontend the kernel picked)."""
    return frontend.metrics_response(request.app[SERVER].metrics,
                                     request.headers.get("Accept"))


@routes.get("/admin/ping")
async def ping(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/admin/server_info")
async def server_info(request: web.Request) -> web.Response:
    s = _server(request)
    return json_response({"endpoints": s.endpoints, "compiled_scheduler": COMPILED,
                          "scheduler_module": sched.impl.__name__,
                          "scheduler_file": sched.impl.__file__,
                          "compiled_cache": cache.COMPILED, "cache_module": cache.impl.__name__,
                          "cache_file": cache.impl.__file__, "cache": s.cache.stats(),
                          "cluster": s.cluster_info()})


@routes.post("/admin/add_app")
async def add_app(request: web.Request) -> web.Response:
    b = await _body(request)
    app = _server(request).add_app(
        field(b, "name", str), field(b, "input_type", str),
        legacy_routes.default_output(b),
        field(b, "latency_slo_micros", int, required=False, default=100_000),
        policy=field(b, "policy", str, required=False, default="single"),
        policy_params=field(b, "policy_params", dict, required=False, default={}),
        cache_enabled=field(b, "cache_enabled", bool, required=False, default=True),
        cache_ttl_s=field(b, "cache_ttl_s", required=False))  # AppConfig validates it
    return json_response({"success": True, "app": app.to_json()})


@routes.post("/admin/update_app")
async def update_app(request: web.Request) -> web.Response:
    """Change an app's SLO, default output, policy or cache setting (given fields only)."""
    b = await _body(request)
    name = field(b, "name", str)
    changes = {}
    if "latency_slo_micros" in b:
        changes["slo_micros"] = field(b, "latency_slo_micros", int)
    if "default_output" in b:
        changes["default_output"] = b["default_output"]
    if "policy" in b:
        changes["policy"] = field(b, "policy", str)
    if "policy_params" in b:
        changes["policy_params"] = field(b, "policy_params", dict)
    if "cache_enabled" in b:
        changes["cache_enabled"] = field(b, "cache_enabled", bool)
    if "input_type" in b:
        changes["input_type"] = field(b, "input_type", str)
    if not changes:
        raise BadRequest("nothing to update: give latency_slo_micros, default_output, policy, "
                         "policy_params or cache_enabled")
    app = _server(request).update_app(name, **changes)
    return json_response({"success": True, "app": app.to_json()})


@routes.post("/admin/delete_app")
@routes.post("/admin/delete_application")
async def delete_app(request: web.Request) -> web.Response:
    """Unregister an app (original Clipper: ``unregister_application``)."""
    b = await _body(request)
    _server(request).delete_app(field(b, "name", str))
    return json_response({"success": True})


@routes.post("/admin/add_model")
async def add_model(request: web.Request) -> web.Response:
    b = await _body(request)
    mv = _server(request).add_model(
        field(b, "model_name", str), field(b, "model_version", (str, int)),
        field(b, "input_type", str),
        batch_size=field(b, "batch_size", int, required=False, default=-1),
        labels=tuple(_str_list(b, "labels", required=False)),
        runtime=legacy_routes.model_runtime(b))
    return json_response({"success": True, "model": mv.to_json()})


def _deploy_options(b: dict) -> dict:
    """What every deploy route takes besides what to run."""
    memory = b.get("memory")
    if memory is not None and (isinstance(memory, bool)
                               or not isinstance(memory, (int, str))):
        raise BadRequest("field 'memory' must be bytes: an integer or a string like \"512m\"")
    return dict(
        num_replicas=field(b, "num_replicas", int, required=False, default=1),
        batch_size=field(b, "batch_size", int, required=False, default=-1),
        labels=tuple(_str_list(b, "labels", required=False)),
        gpus=field(b, "gpus", list, required=False, default=[]),
        cpus=field(b, "cpus", (int, float), required=False, default=None),
        memory=memory,
        constraints=b.get("constraints"),
        warmup_input=b.get("warmup_input"),
        ready_timeout_s=field(b, "ready_timeout_s", (int, float), required=False,
                              default=60.0))


@routes.post("/admin/deploy_python_closure")
async def deploy_python_closure(request: web.Request) -> web.Response:
    b = await _body(request)
    mv = await _deployments(request).deploy_closure(
        field(b, "model_name", str), field(b, "model_version", (str, int)),
        field(b, "input_type", str), field(b, "closure", str), **_deploy_options(b))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/deploy_model")
async def deploy_model(request: web.Request) -> web.Response:
    """Deploy a model saved in its framework's format (``artifact``: base64 of the file) with
    the ready-made runtime of ``framework`` (sklearn, xgboost, lightgbm, onnx, pytorch)."""
    b = await _body(request)
    mv = await _deployments(request).deploy_model(
        field(b, "model_name", str), field(b, "model_version", (str, int)),
        field(b, "input_type", str), field(b, "framework", str), field(b, "artifact", str),
        field(b, "artifact_format", str, required=False),
        field(b, "options", dict, required=False, default={}), **_deploy_options(b))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/deploy_image")
async def deploy_image(request: web.Request) -> web.Response:
    """Run a container image (built on Clipper's base image) as a model version."""
    b = await _body(request)
    mv = await _deployments(request).deploy_image(
        field(b, "model_name", str), field(b, "model_version", (str, int)),
        field(b, "input_type", str), field(b, "image", str), **_deploy_options(b))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/get_replica_logs")
async def get_replica_logs(request: web.Request) -> web.Response:
    b = await _body(request)
    logs = await _deployments(request).logs(
        field(b, "model_name", str), _version(b, required=False),
        field(b, "tail", int, required=False, default=200))
    return json_response({"replicas": logs})


@routes.post("/admin/add_model_links")
async def add_model_links(request: web.Request) -> web.Response:
    b = await _body(request)
    app = field(b, "app_name", str)
    for n in _str_list(b, "model_names"):
        _server(request).registry.link(app, n)
    return json_response({"success": True})


@routes.post("/admin/delete_model_links")
async def delete_model_links(request: web.Request) -> web.Response:
    """Unlink models from an app (original Clipper: ``unlink_model_from_app``)."""
    b = await _body(request)
    app = field(b, "app_name", str)
    for n in _str_list(b, "model_names"):
        _server(request).registry.unlink(app, n)
    return json_response({"success": True})


@routes.post("/admin/get_linked_models")
async def get_linked_models(request: web.Request) -> web.Response:
    b = await _body(request)
    s = _server(request)
    name = field(b, "app_name", str)
    s.registry.get_app(name)
    return json_response(list(s.registry.links.get(name, [])))


@routes.post("/admin/set_model_version")
async def set_model_version(request: web.Request) -> web.Response:
    b = await _body(request)
    mv = _deployments(request).set_model_version(field(b, "model_name", str), _version(b))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/set_num_replicas")
async def set_num_replicas(request: web.Request) -> web.Response:
    b = await _body(request)
    mv = await _deployments(request).set_num_replicas(
        field(b, "model_name", str), _version(b, required=False),
        field(b, "num_replicas", int))
    return json_response({"success": True, "model": mv.to_json()})


#: set_batching body fields -> (BatchingConfig field, JSON types, scale, may be null)
_BATCHING_FIELDS = {
    "batch_size": ("batch_size", int, 1, False),
    "batch_wait_ms": ("batch_wait_s", (int, float), 1e-3, True),
    "max_in_flight": ("max_in_flight", int, 1, False),
    "aimd_step": ("aimd_step", int, 1, False),
    "aimd_backoff": ("aimd_backoff", (int, float), 1, False),
    "aimd_cap": ("aimd_cap", int, 1, False),
    "aimd_initial": ("aimd_initial", int, 1, False),
    "budget_fraction": ("budget_fraction", (int, float), 1, False),
    "rpc_timeout_ms": ("rpc_timeout_s", (int, float), 1e-3, True),
}


def batching_json(cfg) -> dict:
    """A BatchingConfig in the units of the management API (milliseconds)."""
    d = cfg.to_json()
    for wire, (name, _, scale, _) in _BATCHING_FIELDS.items():
        v = d.pop(name)
        d[wire] = v if v is None or scale == 1 else v / scale
    return d


@routes.post("/admin/set_batching")
async def set_batching(request: web.Request) -> web.Response:
    """Change a model version's batching parameters at run time; omitted ones stay."""
    b = await _body(request)
    name = field(b, "model_name", str)
    version = field(b, "model_version", (str, int), required=False)
    unknown = set(b) - set(_BATCHING_FIELDS) - {"model_name", "model_version"}
    if unknown:
        raise BadRequest(f"unknown batching parameter(s) {', '.join(sorted(unknown))}; "
                         f"expected some of {', '.join(_BATCHING_FIELDS)}")
    changes = {}
    for wire, (attr, typ, scale, nullable) in _BATCHING_FIELDS.items():
        if wire not in b:
            continue
        if b[wire] is None and nullable:
            changes[attr] = None
            continue
        v = field(b, wire, typ)
        changes[attr] = v * scale if scale != 1 else v
    cfg = _server(request).set_batching(name, None if version is None else str(version),
                                        **changes)
    return json_response({"success": True, "batching": batching_json(cfg)})


@routes.post("/admin/get_batching")
async def get_batching(request: web.Request) -> web.Response:
    """A model version's batching parameters and the scheduler's counters for it."""
    b = await _body(request)
    version = field(b, "model_version", (str, int), required=False)
    stats = _server(request).batching_stats(
        field(b, "model_name", str), None if version is None else str(version),
        recent=field(b, "recent_batches", bool, required=False, default=False))
    stats["batching"] = batching_json(_server(request).batching[
        (stats["model_name"], stats["model_version"])])
    return json_response(stats)

@routes.post("/admin/delete_versioned_model")
async def delete_versioned_model(request: web.Request) -> web.Response:
    """Stop a model version's replicas and forget it (not the current version, unless it
    is the model's last and no app links the model)."""
    b = await _body(request)
    mv = await _deployments(request).delete_version(field(b, "model_name", str), _version(b))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/stop_inactive_model_versions")
async def stop_inactive_model_versions(request: web.Request) -> web.Response:
    """Stop and forget every non-current version of the named models."""
    b = await _body(request)
    stopped = await _deployments(request).stop_inactive_versions(_str_list(b, "model_names"))
    return json_response({"success": True, "stopped": stopped})


@routes.post("/admin/set_app_policy")
async def set_app_policy(request: web.Request) -> web.Response:
    b = await _body(request)
    app = _server(request).set_app_policy(
        field(b, "name", str), field(b, "policy", str),
        field(b, "policy_params", dict, required=False, default={}),
        reset=field(b, "reset", bool, required=False, default=False))
    return json_response({"success": True, "app": app.to_json()})


@routes.post("/admin/get_app_policy")
async def get_app_policy(request: web.Request) -> web.Response:
    """The app's policy, each linked model's weight, selection and feedback counts (for one
    user's state with ``uid``)."""
    b = await _body(request)
    uid = b.get("uid")
    if uid is not None:
        uid = check_uid(uid)
    return json_response(_server(request).app_policy_info(field(b, "name", str), uid))


def _app_json(s: "ClipperServer", name: str) -> dict:
    d = s.registry.get_app(name).to_json()
    d["linked_models"] = list(s.registry.links.get(name, []))
    return d


@routes.post("/admin/get_all_applications")
async def get_all_applications(request: web.Request) -> web.Response:
    s = _server(request)
    b = await _body(request)
    names = sorted(s.registry.apps)
    if _verbose(b):
        return json_response([_app_json(s, n) for n in names])
    return json_response(names)


@routes.post("/admin/get_application")
async def get_application(request: web.Request) -> web.Response:
    b = await _body(request)
    try:
        return json_response(_app_json(_server(request), field(b, "name", str)))
    except legacy_routes.UNKNOWN:
        return json_response(legacy_routes.NOT_FOUND)  # the original's "no such app"


def _model_json(s: "ClipperServer", key: tuple) -> dict:
    mv = s.registry.models[key]
    d = mv.to_json()
    d["is_current_version"] = s.registry.current.get(mv.name) == mv.version
    mq = s.scheduler.models.get(key)
    d["connected_replicas"] = len(mq.replicas) if mq else 0
    d["healthy_replicas"] = mq.healthy_replicas() if mq else 0
    d.update(legacy_routes.model_fields(mv.runtime))
    return d


@routes.post("/admin/get_all_models")
async def get_all_models(request: web.Request) -> web.Response:
    s = _server(request)
    b = await _body(request)
    keys = list(s.registry.models)
    if _verbose(b):
        return json_response([_model_json(s, k) for k in keys])
    return json_response([f"{n}:{v}" for n, v in keys])


@routes.post("/admin/get_model")
async def get_model(request: web.Request) -> web.Response:
    s = _server(request)
    b = await _body(request)
    name, version = field(b, "model_name", str), _version(b, required=False)
    try:
        mv = s.registry.get_model(name, version)
    except legacy_routes.UNKNOWN:
        return json_response(legacy_routes.NOT_FOUND)  # the original's "no such model"
    return json_response(_model_json(s, mv.key))


@routes.post("/admin/get_all_containers")
async def get_all_containers(request: web.Request) -> web.Response:
    s = _server(request)
    b = await _body(request)
    cs = legacy_routes.container_fields(s, s.deployments.containers())
    if _verbose(b):
        return json_response(cs)
    return json_response([f"{c['model_name']}:{c['model_version']}:{c['instance_id']}"
                          for c in cs])


@web.middleware
async def auth_middleware(request: web.Request, handler):
    token = request.app.get(TOKEN)
    if token and not dashboard.is_public(request.path):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("the management API needs 'Authorization: Bearer <token>'")
    return await handler(request)


def make_app(server: "ClipperServer", token: str | None,
             max_body: int = 256 * 1024 * 1024) -> web.Application:
    # closures and model artifacts can be large
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body)
    mgmt_guard.install(app)  # Host, Origin and Content-Type before the token and any body
    app.middlewares.append(auth_middleware)
    app[SERVER] = server
    app[MAX_BODY] = max_body
    if token:
        app[TOKEN] = token
    app.add_routes(routes)
    app.add_routes(legacy_routes.routes)
    dashboard.setup(app, server)
    openapi.install(app, openapi.management_document())
    return app
