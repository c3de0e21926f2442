"""The query API (default port 1337): handlers parse, call the query processor, format."""

from __future__ import annotations

import orjson
from aiohttp import web

from . import clock, edge, openapi
from .config import AppConfig
from .errors import BadRequest, ClipperError, InvalidInput, MissingField
from .http import (MAX_BODY, error_middleware, json_object, json_response, log_failure,
                   parse_json, read_body, read_json)
from .metrics import Metrics
from .oip import OipApi
from .inputs import PARSERS
from .predict import MAX_BATCH_INPUTS, Outcome, QueryProcessor
from .triton import TritonApi

PROCESSOR = web.AppKey("processor", QueryProcessor)
METRICS = web.AppKey("metrics", Metrics)


@edge.query_route
async def predict(request: web.Request) -> web.Response:
    proc = request.app[PROCESSOR]
    app_name = request.match_info["app"]
    app = proc.registry.get_app(app_name)  # 404 before parsing the body
    raw = await read_body(request)
    # refused before parsing (the default output or 503): it never reaches the scheduler
    refusal = request.app[edge.EDGE].admit(request, app, raw, proc.new_query_id)
    if refusal is not None:
        return refusal
    body = json_object(parse_json(raw))
    if "input" in body:
        if "input_batch" in body:
            raise BadRequest("give either 'input' or 'input_batch', not both")
        batch = False
        inputs = [body["input"]]
    elif "input_batch" in body:
        inputs = body["input_batch"]
        batch = True
        if not isinstance(inputs, list) or not inputs:
            raise InvalidInput("'input_batch' must be a non-empty list of inputs")
        if len(inputs) > MAX_BATCH_INPUTS:
            raise InvalidInput(f"'input_batch' holds {len(inputs)} inputs; at most "
                               f"{MAX_BATCH_INPUTS} are allowed per request")
    else:
        raise MissingField("request body must have 'input' (one input) or 'input_batch' "
                           "(a list of inputs)")
    outcomes = await request.app[METRICS].track(
        app_name, len(inputs),
        proc.predict(app_name, inputs, version=body.get("version"),
                     timeout_ms=body.get("timeout_ms"), uid=body.get("uid"),
                     arrival=request[edge.ARRIVED]))
    if batch:
        return json_response({"batch_predictions": [o.to_json() for o in outcomes]})
    return json_response(outcomes[0].to_json())


class DirectPredict:
    """``POST /{app}/predict`` without aiohttp: the edge's ``direct`` hook (see edge.py,
    "Whole queries").  It takes a whole request whose body is exactly ``{"input": x}`` for
    an app served by :meth:`QueryProcessor.ask_one`, and answers it as :func:`predict`
    would, counted in the same metrics; it declines anything else (other fields, a batch,
    JSON or an input that does not parse: aiohttp's path answers those, errors included)."""

    __slots__ = ("proc", "metrics")

    def __init__(self, proc: QueryProcessor, metrics: Metrics) -> None:
        self.proc = proc
        self.metrics = metrics

    def __call__(self, conn: edge.EdgeConnection, app: AppConfig, body: bytes,
                 arrived: float, close: bool) -> bool:
        if not self.proc.takes_one(app):
            return False  # before parsing: aiohttp's path parses it again
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if type(obj) is not dict or len(obj) != 1 or "input" not in obj:
            return False
        try:
            x = PARSERS[app.input_type](obj["input"], app.name)
        except (ClipperError, RecursionError):  # aiohttp's path answers the error
            return False
        return self.proc.ask_one(app, x, arrived, _Answer(self.metrics, conn, app.name, arrived,
                                                          close))


class _Answer:
    """Writes one direct query's answer on its connection and counts it."""

    __slots__ = ("metrics", "conn", "app", "arrived", "close")

    def __init__(self, metrics: Metrics, conn: edge.EdgeConnection, app: str, arrived: float,
                 close: bool) -> None:
        self.metrics = metrics
        self.conn = conn
        self.app = app
        self.arrived = arrived
        self.close = close

    def __call__(self, outcome: Outcome | None, err: ClipperError | None) -> None:
        conn = self.conn
        if err is None:
            self.metrics.record(self.app, [outcome], clock.now() - self.arrived)
            conn.respond(200, orjson.dumps(outcome.to_json(), option=orjson.OPT_SERIALIZE_NUMPY),
                         self.close)
        else:
            self.metrics.failed(self.app, 1, err)
            log_failure("POST", f"/{self.app}/predict", err)
            conn.respond(err.status, orjson.dumps(err.to_json()), self.close, err.headers)


async def update(request: web.Request) -> web.Response:
    """Feedback: ``{"uid"?, "input", "label"}``; the app's selection policy learns from it."""
    proc = request.app[PROCESSOR]
    app_name = request.match_info["app"]
    proc.registry.get_app(app_name)
    body = json_object(await read_json(request))
    missing = [k for k in ("input", "label") if k not in body]
    if missing:
        raise MissingField(f"feedback must be a JSON object with 'input' (the query's input), "
                           f"'label' (the true answer) and optionally 'uid' (the user); it "
                           f"lacks {' and '.join(repr(k) for k in missing)}")
    return json_response(await proc.feedback(app_name, body["input"], body["label"],
                                             uid=body.get("uid")))


def wants_json(accept: str | None) -> bool:
    """Whether a ``GET /metrics`` asks for JSON rather than Prometheus text.

    Prometheus names its formats in ``Accept`` (``application/openmetrics-text``,
    ``text/plain``): it gets them, as does a client that sends no ``Accept`` at all.  A client
    that asks for ``application/json``, or sends only ``*/*`` (the ``requests`` library's
    default, and so the original ``clipper_admin``'s ``inspect_instance``), gets JSON."""
    if not accept:
        return False
    types = [p.split(";", 1)[0].strip().lower() for p in accept.split(",")]
    if any(t in ("text/plain", "application/openmetrics-text") for t in types):
        return False
    return "application/json" in types or all(t == "*/*" for t in types if t)


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus exposition (``GET /metrics``), or JSON (:func:`wants_json`)."""
    return metrics_response(request.app[METRICS], request.headers.get("Accept"))


def metrics_response(metrics: Metrics, accept: str | None) -> web.Response:
    """``metrics`` as ``GET /metrics`` answers them for a client that sent ``accept``."""
    if wants_json(accept):
        return json_response(metrics.stats())
    body, content_type = metrics.exposition(accept)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def stats(request: web.Request) -> web.Response:
    """The same figures as JSON (``GET /stats``), for the benchmark CLI."""
    return json_response(request.app[METRICS].stats())


def make_app(proc: QueryProcessor, max_body_bytes: int,
             metrics: Metrics | None = None) -> web.Application:
    """The query API; serve it through an :class:`edge.Edge` (``Edge.install``)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body_bytes)
    metrics = metrics if metrics is not None else Metrics(proc)
    app[PROCESSOR] = proc
    app[METRICS] = metrics
    app[MAX_BODY] = max_body_bytes
    app.router.add_post("/{app}/predict", predict)
    app.router.add_post("/{app}/predict/", predict)  # the original accepted the slash
    app.router.add_post("/{app}/update", update)
    app.router.add_post("/{app}/update/", update)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/stats", stats)
    oip = OipApi(proc, metrics)
    # Triton's repository routes first: /v2/models/stats is not an app named "stats"
    app.router.add_routes(TritonApi(proc, metrics, oip).routes())
    app.router.add_routes(oip.routes())  # Open Inference Protocol v2
    openapi.install(app, openapi.query_document())
    return app
