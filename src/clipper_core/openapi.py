"""OpenAPI 3.0 documents of the query API and the management API, served at ``/openapi.json``
on each port.

``tests/fuzz/test_openapi.py`` keeps them true: every route a port serves is in its document
and nothing else is, and schemathesis sends generated requests to every operation and checks
the answers against the document (and that none is a 5xx).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import __version__
from .http import json_response

ANY: dict = {}
ERROR = {"type": "object", "required": ["error"],
         "properties": {"error": {"type": "string"}, "cause": {"type": "string"},
                        "code": {"type": "string"}}}
NAME = {"type": "string", "description": "a DNS-1123 label"}
VERSION = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
UID = {"oneOf": [{"type": "string"}, {"type": "integer"}]}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _op(summary: str, body: dict | None = None, ok: dict | None = None, *,
        required: tuple = (), busy: bool = False, ok_type: str = "application/json") -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "OK",
                "content": ({ok_type: {"schema": ok if ok is not None else ANY}})},
        "4XX": {"description": "the request was refused; `cause` says why",
                "content": _json(ERROR)}}}
    if busy:
        op["responses"]["503"] = {"description": "overloaded, or no answer in time",
                                  "content": _json(ERROR)}
    if body is not None:
        schema = {"type": "object", "properties": body}
        if required:
            schema["required"] = list(required)
        op["requestBody"] = {"required": True, "content": _json(schema)}
    return op


def _param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _doc(title: str, paths: dict) -> dict:
    return {"openapi": "3.0.3", "info": {"title": title, "version": __version__},
            "paths": paths}


# ---------------------------------------------------------------------------- query API

def _metrics_op(summary: str) -> dict:
    """``GET /metrics``: Prometheus text when Accept names text/plain or OpenMetrics (or is
    absent); the JSON of /stats for Accept: application/json or */* (what the original
    Clipper's client sends)."""
    op = _op(summary, ok={"type": "string"}, ok_type="text/plain")
    op["responses"]["200"]["content"].update(_json({"type": "object"}))
    return op


def query_document() -> dict:
    prediction = {"type": "object", "required": ["query_id", "default"],
                  "properties": {"query_id": {"type": "integer"}, "output": ANY,
                                 "default": {"type": "boolean"},
                                 "default_explanation": {"type": "string"}}}
    predict_ok = {"oneOf": [prediction, {"type": "object", "required": ["batch_predictions"],
                                         "properties": {"batch_predictions": {
                                             "type": "array", "items": prediction}}}]}
    app = [_param("app")]
    model = [_param("name")]
    mv = [_param("name"), _param("version")]
    tensor = {"type": "object", "required": ["name", "datatype", "shape"],
              "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                             "shape": {"type": "array", "items": {"type": "integer"}},
                             "data": ANY, "parameters": {"type": "object"}}}
    infer = _op("Open Inference Protocol v2 inference", {
        "id": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
        "outputs": {"type": "array", "items": {"type": "object"}},
        "parameters": {"type": "object"}}, {"type": "object"}, required=("inputs",),
        busy=True)
    meta = _op("model metadata", ok={"type": "object"})
    ready = _op("model readiness", ok={"type": "object"})
    predict = _op("predict one input or a batch", {
        "input": ANY, "input_batch": {"type": "array"}, "version": VERSION,
        "timeout_ms": {"type": "number"}, "uid": UID}, predict_ok, busy=True)
    update = _op("feedback: the true label of an input", {"input": ANY, "label": ANY, "uid": UID},
                 {"type": "object"}, required=("input", "label"), busy=True)
    config = _op("Triton model configuration", ok={"type": "object"})
    metrics = _metrics_op("Prometheus metrics")
    stats = _op("Triton inference statistics", ok={"type": "object"})
    return _doc("Clipper query API", {
        "/{app}/predict": {"parameters": app, "post": predict},
        "/{app}/update": {"parameters": app, "post": update},
        "/metrics": {"get": metrics},
        "/stats": {"get": _op("the metrics as JSON", ok={"type": "object"})},
        "/openapi.json": {"get": _op("this document", ok={"type": "object"})},
        "/v2": {"get": _op("server metadata", ok={"type": "object"})},
        "/v2/health/live": {"get": _op("liveness", ok={"type": "object"})},
        "/v2/health/ready": {"get": _op("readiness", ok={"type": "object"})},
        "/v2/models/{name}": {"parameters": model, "get": meta},
        "/v2/models/{name}/versions/{version}": {"parameters": mv, "get": meta},
        "/v2/models/{name}/ready": {"parameters": model, "get": ready},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": mv, "get": ready},
        "/v2/models/{name}/infer": {"parameters": model, "post": infer},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": mv, "post": infer},
        # Triton's repository extension, enough for perf_analyzer (triton.py)
        "/v2/models/{name}/config": {"parameters": model, "get": config},
        "/v2/models/{name}/versions/{version}/config": {"parameters": mv, "get": config},
        "/v2/models/stats": {"get": stats},
        "/v2/models/{name}/stats": {"parameters": model, "get": stats},
        "/v2/models/{name}/versions/{version}/stats": {"parameters": mv, "get": stats},
        "/v2/repository/index": {"post": _op("the models (apps) and their readiness",
                                             {"ready": {"type": "boolean"}},
                                             {"type": "array"})},
        # the original Clipper's clients add a trailing slash
        "/{app}/predict/": {"parameters": app, "post": predict},
        "/{app}/update/": {"parameters": app, "post": update},
    })


# ---------------------------------------------------------------------------- management API

def management_document() -> dict:
    strs = {"type": "array", "items": {"type": "string"}}
    verbose = {"verbose": {"type": "boolean"}}
    app_fields = {"name": NAME, "input_type": {"type": "string"}, "default_output": ANY,
                  "latency_slo_micros": {"type": "integer"}, "policy": {"type": "string"},
                  "policy_params": {"type": "object"}, "cache_enabled": {"type": "boolean"},
                  "cache_ttl_s": {"type": "number", "nullable": True}}
    model = {"model_name": NAME, "model_version": VERSION}
    batching = {**model, "batch_size": {"type": "integer"}, "batch_wait_s": {"type": "number"},
                "max_in_flight": {"type": "integer"}, "aimd_step": {"type": "integer"},
                "aimd_backoff": {"type": "number"}, "aimd_cap": {"type": "integer"},
                "rpc_timeout_s": {"type": "number", "nullable": True}}
    deploy = {**model, "input_type": {"type": "string"}, "num_replicas": {"type": "integer"},
              "batch_size": {"type": "integer"}, "labels": strs, "gpus": {"type": "array"},
              "cpus": {"type": "number"}, "memory": {"oneOf": [{"type": "integer"},
                                                              {"type": "string"}]},
              "warmup_input": ANY, "ready_timeout_s": {"type": "number"}}
    P = lambda summary, body, required=(): {"post": _op(summary, body, required=required)}  # noqa: E731
    return _doc("Clipper management API", {
        "/admin/ping": {"get": _op("liveness", ok={"type": "object"})},
        "/admin/server_info": {"get": _op("endpoints and build", ok={"type": "object"})},
        "/metrics": {"get": _metrics_op("this frontend's Prometheus metrics (as on the query "
                                        "port, also where that port is shared)")},
        "/openapi.json": {"get": _op("this document", ok={"type": "object"})},
        "/admin/add_app": P("register an application", app_fields,
                            ("name", "input_type")),
        "/admin/update_app": P("change an application", app_fields, ("name",)),
        "/admin/delete_app": P("unregister an application", {"name": NAME}, ("name",)),
        "/admin/delete_application": P("unregister an application", {"name": NAME},
                                       ("name",)),
        "/admin/add_model": P("register a model version started by hand", {
            **model, "input_type": {"type": "string"}, "batch_size": {"type": "integer"},
            "labels": strs}, ("model_name", "model_version", "input_type")),
        "/admin/deploy_python_closure": P("run a cloudpickled function as a model version", {
            **deploy, "closure": {"type": "string"}},
            ("model_name", "model_version", "input_type", "closure")),
        "/admin/add_model_links": P("link models to an application", {
            "app_name": NAME, "model_names": strs}, ("app_name", "model_names")),
        "/admin/delete_model_links": P("unlink models from an application", {
            "app_name": NAME, "model_names": strs}, ("app_name", "model_names")),
        "/admin/get_linked_models": P("models linked to an application", {"app_name": NAME},
                                      ("app_name",)),
        "/admin/set_model_version": P("make a version current (rollback)", model,
                                      ("model_name", "model_version")),
        "/admin/set_num_replicas": P("scale a model version", {
            **model, "num_replicas": {"type": "integer"}}, ("model_name", "num_replicas")),
        "/admin/set_batching": P("change batching at run time", batching, ("model_name",)),
        "/admin/get_batching": P("batching settings and state", {**model, **verbose},
                                 ("model_name",)),
        "/admin/delete_versioned_model": P("delete a model version", model,
                                           ("model_name", "model_version")),
        "/admin/stop_inactive_model_versions": P("delete versions that are not current", {
            "model_names": strs}, ("model_names",)),
        "/admin/set_app_policy": P("change an application's selection policy", {
            "name": NAME, "policy": {"type": "string"}, "policy_params": {"type": "object"},
            "reset": {"type": "boolean"}}, ("name", "policy")),
        "/admin/get_app_policy": P("an application's policy and what it learned", {
            "name": NAME, "uid": UID}, ("name",)),
        "/admin/get_all_applications": P("all applications", verbose),
        "/admin/get_application": P("one application", {"name": NAME}, ("name",)),
        "/admin/get_all_models": P("all model versions", verbose),
        "/admin/get_model": P("one model version", model, ("model_name",)),
        "/admin/get_all_containers": P("all replicas", verbose),
        "/admin/deploy_image": P("run a container image as a model version (docker backend)", {
            **deploy, "image": {"type": "string"}},
            ("model_name", "model_version", "input_type", "image")),
        "/admin/deploy_model": P("run a model file with a framework's ready-made runtime", {
            **deploy, "framework": {"type": "string"}, "artifact": {"type": "string"},
            "artifact_format": {"type": "string"}, "options": {"type": "object"}},
            ("model_name", "model_version", "input_type", "framework", "artifact")),
        "/admin/get_replica_logs": P("the last log lines of a model's replicas", {
            **model, "tail": {"type": "integer"}}, ("model_name",)),
        "/admin/get_container": P("one replica, as the original Clipper's client asks", {
            **model, "replica_id": {"type": "integer"}}, ("model_name", "model_version")),
        # the dashboard (dashboard/): its page and assets, and its live feed
        "/": {"get": _op("the dashboard page", ok={"type": "string"}, ok_type="text/html")},
        "/dashboard/{name}": {"parameters": [_param("name")],
                              "get": _op("a dashboard asset", ok={"type": "string"},
                                         ok_type="*/*")},
        "/dashboard/events": {"get": _op("the dashboard's live figures, server-sent events",
                                         ok={"type": "string"}, ok_type="text/event-stream")},
    })


def install(app: web.Application, document: dict) -> None:
    """Serve ``document`` at ``GET /openapi.json``."""
    async def openapi(request: web.Request) -> web.Response:
        return json_response(document)

    app.router.add_get("/openapi.json", openapi)
