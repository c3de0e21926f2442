"""What the original Clipper's management routes answered that Clipper's own do not need:
the fields and shapes its client, ``clipper_admin`` 0.4, reads.

* ``add_app`` with the original's request body (exactly ``name``, ``input_type``,
  ``default_output`` as a string and ``latency_slo_micros``): the default output is JSON text,
  as the original frontend read it (``"-1.0"`` is answered as ``-1.0``; text that is not JSON
  stays text).  A body with any of Clipper's own fields keeps the default as given.
* ``add_model`` keeps ``container_name`` (the image) and ``model_data_path``; ``get_model``
  answers them (``NO_CONTAINER`` for a model whose replicas are started outside Clipper, as
  the original client itself registers them).
* ``get_application`` / ``get_model`` / ``get_container`` of something unknown answer ``{}``
  (the original's "not found"; its client returns None).
* container listings carry ``model_replica_id`` (the replica's position among its model
  version's replicas), ``model_id`` (``name:version``) and ``input_type``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import UnknownApp, UnknownModel, UnknownVersion
from .http import field, json_object, json_response, read_json
from .legacy_rpc import json_or_text

if TYPE_CHECKING:
    from .server import ClipperServer

#: what the original client sends to add_app, and nothing else
ORIGINAL_ADD_APP = frozenset({"name", "input_type", "default_output", "latency_slo_micros"})
#: clipper_admin's image name for a model whose containers it does not start
NO_CONTAINER = "NO_CONTAINER"
#: what "not found" looks like to the original client
NOT_FOUND: dict = {}
UNKNOWN = (UnknownApp, UnknownModel, UnknownVersion)


def default_output(body: dict) -> Any:
    """The app's default output: JSON text parsed when the body is the original's."""
    value = body.get("default_output")
    if isinstance(value, str) and set(body) <= ORIGINAL_ADD_APP:
        return json_or_text(value)
    return value


def model_runtime(body: dict) -> dict | None:
    """The runtime record of a model registered with ``add_model``: started outside Clipper,
    with the image and data path the original client gives (None when it gives neither)."""
    extra = {k: body[k] for k in ("container_name", "model_data_path")
             if isinstance(body.get(k), str)}
    return {"kind": "external", **extra} if extra else None


def model_fields(runtime: dict) -> dict:
    """``container_name`` and ``model_data_path`` of a model, as the original answered them."""
    kind = runtime.get("kind")
    if kind == "external":
        return {"container_name": runtime.get("container_name", NO_CONTAINER),
                "model_data_path": runtime.get("model_data_path", "DEPRECATED")}
    return {"container_name": f"clipper/{kind}", "model_data_path": runtime.get("path", "")}


def container_fields(server: "ClipperServer", containers: list[dict]) -> list[dict]:
    """Add the original's replica fields to ``server.deployments.containers()`` entries."""
    seen: dict[tuple, int] = {}
    models = server.registry.models
    for c in containers:
        key = (c["model_name"], c["model_version"])
        c["model_replica_id"] = seen.get(key, 0)
        seen[key] = c["model_replica_id"] + 1
        c["model_id"] = f"{key[0]}:{key[1]}"
        mv = models.get(key)
        c["input_type"] = mv.input_type if mv is not None else None
    return containers


routes = web.RouteTableDef()


@routes.post("/admin/get_container")
async def get_container(request: web.Request) -> web.Response:
    """One replica of a model version: ``replica_id`` is its ``model_replica_id`` (or its
    ``instance_id``); ``{}`` when there is none."""
    from .management import SERVER

    server: "ClipperServer" = request.app[SERVER]
    b = json_object(await read_json(request))
    name = field(b, "model_name", str)
    version = str(field(b, "model_version", (str, int)))
    replica = field(b, "replica_id", (str, int))
    for c in container_fields(server, server.deployments.containers()):
        if (c["model_name"], c["model_version"]) != (name, version):
            continue
        if replica in (c["model_replica_id"], str(c["model_replica_id"]), c["instance_id"]):
            return json_response(c)
    return json_response(NOT_FOUND)
