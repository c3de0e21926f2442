"""Triton's model-repository extensions on the query port, enough for Triton's own tools
(``perf_analyzer``, ``tritonclient``'s ``get_model_config`` / ``get_inference_statistics`` /
``get_model_repository_index``) to drive a Clipper app as if it were a Triton model.

* ``GET /v2/models/{app}/config``: the app as a Triton model configuration: one input
  ``input`` (dims ``[-1]`` of the app's element type for numeric apps, ``[1]`` of TYPE_STRING
  for bytes and strings) and one output ``output``, batched (``max_batch_size``): a request of
  shape ``[N, ...]`` is N queries.
* ``GET /v2/models/{app}/stats`` (and ``/v2/models/stats``): Triton's statistics from Clipper's
  counters: ``success`` counts answered queries and the time from arrival to answer,
  ``fail`` the queries answered with an error, ``queue`` the time queries waited in the
  scheduler's queue, ``compute_infer`` the model's compute time, ``execution_count`` the
  batches; ``cache_hit`` / ``cache_miss`` the prediction cache.
* ``POST /v2/repository/index``: every app, ``READY`` when each of its linked models has a
  replica that answers, else ``UNAVAILABLE`` with the reason.

Handlers only read the registry and the metrics; they change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .http import json_response
from .oip import DATATYPE_OF, INPUT_NAME, OUTPUT_NAME, _oip_errors, app_problems
from .predict import MAX_BATCH_INPUTS

if TYPE_CHECKING:
    from .metrics import Metrics
    from .oip import OipApi
    from .predict import QueryProcessor

#: OIP datatype -> Triton's model-configuration data type
TRITON_TYPE = {"BOOL": "TYPE_BOOL", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16",
               "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8",
               "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
               "BYTES": "TYPE_STRING"}


def _duration(count: int, seconds: float) -> dict:
    return {"count": int(count), "ns": int(seconds * 1e9)}


class TritonApi:
    """The model-repository routes; ``oip`` tells the output datatype an app answers with."""

    def __init__(self, proc: "QueryProcessor", metrics: "Metrics", oip: "OipApi") -> None:
        self.proc = proc
        self.metrics = metrics
        self.oip = oip

    def routes(self) -> list[web.RouteDef]:
        e = _oip_errors
        return [
            web.get("/v2/models/{name}/config", e(self.config)),
            web.get("/v2/models/{name}/versions/{version}/config", e(self.config)),
            web.get("/v2/models/stats", e(self.stats)),
            web.get("/v2/models/{name}/stats", e(self.stats)),
            web.get("/v2/models/{name}/versions/{version}/stats", e(self.stats)),
            web.post("/v2/repository/index", e(self.index)),
        ]

    async def config(self, request: web.Request) -> web.Response:
        app = self.proc.registry.get_app(request.match_info["name"])
        version = request.match_info.get("version")
        if version is not None:
            app_problems(self.proc, app, version)  # UnknownVersion -> 404
        numeric = DATATYPE_OF[app.input_type] != "BYTES"
        out_type = self.oip.output_datatype(app)
        return json_response({
            "name": app.name,
            "platform": "clipper",
            "backend": "clipper",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": MAX_BATCH_INPUTS,
            "input": [{"name": INPUT_NAME, "data_type": TRITON_TYPE[DATATYPE_OF[app.input_type]],
                       "format": "FORMAT_NONE", "dims": [-1] if numeric else [1],
                       "is_shape_tensor": False, "allow_ragged_batch": False,
                       "optional": False}],
            # one answer per query: Triton writes a [N] output as dims [1] reshaped to []
            "output": [{"name": OUTPUT_NAME, "data_type": TRITON_TYPE[out_type],
                        "dims": [1], "reshape": {"shape": []}, "label_filename": "",
                        "is_shape_tensor": False}],
            "parameters": {"input_type": {"string_value": app.input_type},
                           "latency_slo_micros": {"string_value": str(app.slo_micros)},
                           "policy": {"string_value": app.policy}},
        })

    def _model_stats(self, name: str, figures: dict) -> dict:
        reg = self.proc.registry
        app = figures["apps"].get(name, {})
        links = reg.links.get(name) or []
        queue = compute = rpc = batch = (0, 0.0)
        batches = 0
        for model in links:
            v = reg.current.get(model)
            m = figures["models"].get(f"{model}:{v}") if v else None
            if not m:
                continue
            s = m
            queue = (queue[0] + s["queue_delay_s"]["count"], queue[1] + s["queue_delay_s"]["sum"])
            compute = (compute[0] + s["model_compute_s"]["count"],
                       compute[1] + s["model_compute_s"]["sum"])
            rpc = (rpc[0] + s["rpc_s"]["count"], rpc[1] + s["rpc_s"]["sum"])
            batch = (batch[0] + s["batch_size"]["count"], batch[1] + s["batch_size"]["sum"])
            batches += s["rpc_s"]["count"]
        answered = app.get("prediction", 0) + app.get("default", 0)
        lat = app.get("latency_s", {"count": 0, "sum": 0.0})
        version = ""
        if len(links) == 1 and links[0] in reg.current:
            version = reg.current[links[0]]
        zero = _duration(0, 0.0)
        return {
            "name": name, "version": version, "last_inference": 0,
            "inference_count": int(answered), "execution_count": int(batches),
            "inference_stats": {
                "success": _duration(lat["count"], lat["sum"]),
                "fail": _duration(app.get("error", 0) + app.get("shed", 0), 0.0),
                "queue": _duration(*queue),
                "compute_input": zero,
                "compute_infer": _duration(*compute),
                "compute_output": zero,
                "cache_hit": _duration(app.get("cache_hits", 0), 0.0),
                "cache_miss": _duration(app.get("cache_misses", 0), 0.0),
            },
            "batch_stats": [],
            "memory_usage": [],
        }

    async def stats(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name")
        reg = self.proc.registry
        if name is not None:
            app = reg.get_app(name)
            version = request.match_info.get("version")
            if version is not None:
                app_problems(self.proc, app, version)  # UnknownVersion -> 404
            names = [app.name]
        else:
            names = sorted(reg.apps)
        figures = self.metrics.stats()
        return json_response({"model_stats": [self._model_stats(n, figures) for n in names]})

    async def index(self, request: web.Request) -> web.Response:
        reg = self.proc.registry
        out = []
        for name in sorted(reg.apps):
            app = reg.apps[name]
            links = reg.links.get(name) or []
            problems = app_problems(self.proc, app)
            entry = {"name": name, "state": "UNAVAILABLE" if problems else "READY"}
            if links and links[0] in reg.current:
                entry["version"] = reg.current[links[0]]
            if problems:
                entry["reason"] = "; ".join(problems)
            out.append(entry)
        return json_response(out)
