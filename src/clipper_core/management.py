"""The management API (default port 1338, bound to 127.0.0.1): Clipper-compatible routes.

Handlers validate the body, call one ClipperServer operation and answer JSON.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import Unauthorized
from .predict import check_uid
from .http import MAX_BODY, error_middleware, field, json_object, json_response, read_json
from . import cache, sched
from .sched import COMPILED

if TYPE_CHECKING:
    from .server import ClipperServer

SERVER = web.AppKey("server", object)
TOKEN = web.AppKey("token", str)

routes = web.RouteTableDef()


def _server(request: web.Request) -> "ClipperServer":
    return request.app[SERVER]


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    return json_object(await read_json(request))


def _verbose(body: dict) -> bool:
    return bool(field(body, "verbose", bool, required=False, default=False))


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
                          "cache_file": cache.impl.__file__, "cache": s.cache.stats()})


@routes.post("/admin/add_app")
async def add_app(request: web.Request) -> web.Response:
    b = await _body(request)
    app = _server(request).add_app(
        field(b, "name", str), field(b, "input_type", str),
        field(b, "default_output", required=False),
        field(b, "latency_slo_micros", int, required=False, default=100_000),
        policy=field(b, "policy", str, required=False, default="single"),
        policy_params=field(b, "policy_params", dict, required=False, default={}),
        cache_enabled=field(b, "cache_enabled", bool, required=False, default=True),
        cache_ttl_s=field(b, "cache_ttl_s", required=False))  # AppConfig validates it
    return json_response({"success": True, "app": app.to_json()})


@routes.post("/admin/add_model")
async def add_model(request: web.Request) -> web.Response:
    b = await _body(request)
    mv = _server(request).add_model(
        field(b, "model_name", str), field(b, "model_version", (str, int)),
        field(b, "input_type", str),
        batch_size=field(b, "batch_size", int, required=False, default=-1),
        labels=tuple(field(b, "labels", list, required=False, default=[])))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/deploy_python_closure")
async def deploy_python_closure(request: web.Request) -> web.Response:
    b = await _body(request)
    mv = await _server(request).deploy_closure(
        field(b, "model_name", str), field(b, "model_version", (str, int)),
        field(b, "input_type", str), field(b, "closure", str),
        num_replicas=field(b, "num_replicas", int, required=False, default=1),
        batch_size=field(b, "batch_size", int, required=False, default=-1),
        labels=tuple(field(b, "labels", list, required=False, default=[])),
        gpus=tuple(str(g) for g in field(b, "gpus", list, required=False, default=[])))
    return json_response({"success": True, "model": mv.to_json()})


@routes.post("/admin/add_model_links")
async def add_model_links(request: web.Request) -> web.Response:
    b = await _body(request)
    app = field(b, "app_name", str)
    names = field(b, "model_names", list)
    for n in names:
        _server(request).registry.link(app, n)
    return json_response({"success": True})


@routes.post("/admin/set_model_version")
async def set_model_version(request: web.Request) -> web.Response:
    b = await _body(request)
    _server(request).registry.set_current_version(field(b, "model_name", str),
                                                  str(field(b, "model_version", (str, int))))
    return json_response({"success": True})


@routes.post("/admin/set_num_replicas")
async def set_num_replicas(request: web.Request) -> web.Response:
    b = await _body(request)
    version = field(b, "model_version", (str, int), required=False)
    mv = await _server(request).set_num_replicas(
        field(b, "model_name", str), None if version is None else str(version),
        field(b, "num_replicas", int))
    return json_response({"success": True, "model": mv.to_json()})


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
    return json_response(_app_json(_server(request), field(b, "name", str)))


def _model_json(s: "ClipperServer", key: tuple) -> dict:
    mv = s.registry.models[key]
    d = mv.to_json()
    d["is_current_version"] = s.registry.current.get(mv.name) == mv.version
    mq = s.scheduler.models.get(key)
    d["connected_replicas"] = len(mq.replicas) if mq else 0
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
    version = field(b, "model_version", (str, int), required=False)
    mv = s.registry.get_model(field(b, "model_name", str),
                              None if version is None else str(version))
    return json_response(_model_json(s, mv.key))


@routes.post("/admin/get_all_containers")
async def get_all_containers(request: web.Request) -> web.Response:
    s = _server(request)
    b = await _body(request)
    cs = s.containers()
    if _verbose(b):
        return json_response(cs)
    return json_response([f"{c['model_name']}:{c['model_version']}:{c['instance_id']}"
                          for c in cs])


@web.middleware
async def auth_middleware(request: web.Request, handler):
    token = request.app.get(TOKEN)
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("the management API needs 'Authorization: Bearer <token>'")
    return await handler(request)


def make_app(server: "ClipperServer", token: str | None) -> web.Application:
    max_body = 256 * 1024 * 1024  # closures can be large
    app = web.Application(middlewares=[error_middleware, auth_middleware],
                          client_max_size=max_body)
    app[SERVER] = server
    app[MAX_BODY] = max_body
    if token:
        app[TOKEN] = token
    app.add_routes(routes)
    return app
