"""HTTP plumbing shared by the query and management APIs: JSON bodies and the error mapping."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import ClientPayloadError, http_exceptions, web
from aiohttp.web_protocol import RequestPayloadError

from . import log
from .errors import (BadRequest, ClipperError, MalformedJSON, MissingField, Overloaded,
                     PayloadTooLarge, RequestTimeout, brief)

_JSON = "application/json"
_REFUSED = log.RateLimitedLog(log.access, interval_s=1.0)
MAX_BODY = web.AppKey("max_body_bytes", int)


def json_response(obj: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY),
                        status=status, content_type=_JSON, headers=headers)


#: a client that announced a body must deliver it within this many seconds (a body shorter
#: than its Content-Length would otherwise hold the request, and its connection, forever)
BODY_TIMEOUT_S = 30.0
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)


async def read_body(request: web.Request) -> bytes:
    """The request body; ``PayloadTooLarge`` when it is over the app's limit, ``BadRequest``
    when it is not delivered in time or cannot be decoded (a ``Content-Encoding`` it lacks)."""
    try:
        if request.content.is_eof():  # all of it is here already: no timer needed
            return await request.read()
        async with asyncio.timeout(request.app.get(BODY_TIMEOUT, BODY_TIMEOUT_S)):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive within "
                             f"{request.app.get(BODY_TIMEOUT, BODY_TIMEOUT_S):g} s (is it "
                             "shorter than its Content-Length?)") from None
    except (http_exceptions.HttpProcessingError, ClientPayloadError, RequestPayloadError) as e:
        enc = request.headers.get("Content-Encoding")
        raise BadRequest("the request body cannot be read"
                         + (f" as Content-Encoding {brief(enc)}" if enc else "")
                         + f": {type(e).__name__}") from None


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON; typed errors for an oversize or malformed body."""
    return parse_json(await read_body(request))


def parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON; ``MalformedJSON`` when it is empty or not JSON."""
    if not body:
        raise MalformedJSON("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedJSON(f"request body is not valid JSON: {e}") from None


def json_object(body: Any, what: str = "request body") -> dict:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(body).__name__}")
    return body


def field(body: dict, name: str, typ: type | tuple | None = None, *, required: bool = True,
          default: Any = None, what: str = "request") -> Any:
    if name not in body:
        if required:
            raise MissingField(f"{what} lacks the required field {name!r}")
        return default
    val = body[name]
    if typ is not None:
        bad = not isinstance(val, typ) or (isinstance(val, bool) and typ in (int, (int, float)))
        if bad:
            tn = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise BadRequest(f"field {name!r} must be {tn}, got {type(val).__name__}")
    return val


def _too_large(request: web.Request) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of "
                           f"{request.app.get(MAX_BODY, '?')} bytes")


def log_error(request: web.Request, e: ClipperError, status: int | None = None) -> None:
    """Log a typed error once: a server fault as an error; a refused request (a client's
    fault, or overload) rate-limited, since one line per refusal would let a client (or a
    flood) grow the log at will."""
    log_failure(request.method, request.path, e, status)


def log_failure(method: str, path: str, e: ClipperError, status: int | None = None) -> None:
    """:func:`log_error` for a request known by its method and path (the edge's direct
    path has no aiohttp request)."""
    status = e.status if status is None else status
    if status >= 500 and not isinstance(e, Overloaded):
        log.server.error("%s %s: %s", method, path, e.cause)
    else:
        _REFUSED.info("%s %s -> %d %s", method, path, status, e.cause)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Map typed errors (and aiohttp's own 404/405/413) to ``{"error", "cause"}`` JSON."""
    try:
        return await handler(request)
    except ClipperError as e:
        log_error(request, e)
        return json_response(e.to_json(), e.status, e.headers or None)
    except web.HTTPException as e:
        if e.status == 413:
            return json_response(_too_large(request).to_json(), 413)
        if e.status == 404:
            return json_response({"error": "not_found",
                                  "cause": f"no route {request.method} {request.path}"}, 404)
        if e.status == 405:
            return json_response({"error": "method_not_allowed",
                                  "cause": f"{request.method} is not allowed on {request.path}"},
                                 405)
        raise
    except RecursionError:
        # a JSON body nested deep enough to exhaust the stack in some check: the client's fault
        e = BadRequest("the request body is nested too deeply")
        _REFUSED.info("%s %s -> 400 %s", request.method, request.path, e.cause)
        return json_response(e.to_json(), 400)
    except Exception as e:
        log.server.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": "internal_error",
                              "cause": f"{type(e).__name__}: {e}"}, 500)
