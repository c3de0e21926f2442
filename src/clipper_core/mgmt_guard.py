"""What keeps web pages away from the management API, which deploys code.

A page the operator opens can send requests to ``127.0.0.1:1338``: a cross-site "simple"
request (``text/plain``, a form) needs no CORS preflight, and a DNS-rebinding page even reads
the answers, under its own host name.  So, before any handler or body read:

* ``Host`` must name the address the API is bound to (``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT`` on loopback; that address when bound to one; anything when bound to a wildcard
  address, where the token guards it).  A rebinding page's ``Host`` is its own name: refused.
* ``Origin``, when sent, must be that same origin (the dashboard served from this port is);
  ``null`` and foreign origins are refused.
* A request that can carry a body (POST, PUT, PATCH, DELETE) must say
  ``Content-Type: application/json``, which no browser sends cross-site without a preflight
  that is never granted.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from .errors import Forbidden, UnsupportedMediaType
from .log import RateLimitedLog
from . import log

#: the Host values (lower-case ``host:port``) accepted; None: any (wildcard bind)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", object)
_REFUSALS = web.AppKey("guard_refusals", RateLimitedLog)
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def allow_hosts(app: web.Application, host: str, port: int) -> None:
    """Accept the ``Host`` names of ``host:port`` (called once the port is bound)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        app[ALLOWED_HOSTS] = None
        return
    names = {host.lower()}
    if ip is not None and ip.version == 6:
        names = {f"[{ip.compressed}]"}
    if host == "localhost" or (ip is not None and ip.is_loopback):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    app[ALLOWED_HOSTS] = frozenset(f"{n}:{port}" for n in names)


def install(app: web.Application) -> None:
    app[ALLOWED_HOSTS] = frozenset()  # nothing until the port is known
    app[_REFUSALS] = RateLimitedLog(log.access)
    app.middlewares.append(guard_middleware)


@web.middleware
async def guard_middleware(request: web.Request, handler):
    app = request.app
    allowed = app[ALLOWED_HOSTS]
    host = (request.headers.get("Host") or "").strip().lower()
    if allowed is not None and host not in allowed:
        _refuse(app, "Host", request)
        raise Forbidden("the management API answers only requests addressed to the address it "
                        "is bound to (the Host header names another: a page of another site, "
                        "or DNS rebinding)")
    origin = request.headers.get("Origin")
    if origin is not None and origin.strip().lower() != f"{request.scheme}://{host}":
        _refuse(app, "Origin", request)
        raise Forbidden("the management API refuses requests from web pages of other origins")
    if request.method in _BODY_METHODS and request.content_type != "application/json":
        _refuse(app, "Content-Type", request)
        raise UnsupportedMediaType("management requests must have Content-Type: "
                                   "application/json")
    return await handler(request)


def _refuse(app: web.Application, what: str, request: web.Request) -> None:
    app[_REFUSALS].warning("management API refused %s %s: foreign or missing %s",
                           request.method, request.path, what)
