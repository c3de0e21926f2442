"""The live dashboard, served by the management port.

``GET /`` is the page; ``/dashboard/<asset>`` its JavaScript modules and style sheet, read once
from this package (they ship in the wheel: no CDN, no build step, works offline).  Page and
assets hold no data and need no token; the figures come from ``GET /dashboard/events``, a
server-sent-event stream behind the management API's token like every other route, and the
page's actions (roll back, scale, batching settings) call the ordinary management routes.

The stream costs nothing while no page is open (see :mod:`.feed`).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from .feed import EventLog, Feed, sample

if TYPE_CHECKING:
    from ..server import ClipperServer

__all__ = ["setup", "is_public", "FEED"]

FEED = web.AppKey("dashboard_feed", Feed)
_ASSETS = web.AppKey("dashboard_assets", dict)

#: files under static/ and the content type each is served with
ASSET_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "tables.js": "text/javascript; charset=utf-8",
}
#: the page loads nothing from anywhere else, and nothing may frame it
_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_public(path: str) -> bool:
    """True for the page and its static assets: they carry no data, so a browser loads them
    without the management token (it has no way to send one for a navigation)."""
    if path == "/":
        return True
    return path.startswith("/dashboard/") and path[len("/dashboard/"):] in ASSET_TYPES


def _load_assets() -> dict[str, tuple[bytes, str, str]]:
    root = resources.files(__package__) / "static"
    out = {}
    for name, ctype in ASSET_TYPES.items():
        body = (root / name).read_bytes()
        out[name] = (body, ctype, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return out


def _asset(request: web.Request, name: str) -> web.Response:
    body, ctype, etag = request.app[_ASSETS][name]
    headers = dict(_SECURITY, ETag=etag, **{"Content-Type": ctype})
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


async def index(request: web.Request) -> web.Response:
    return _asset(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSET_TYPES:
        raise web.HTTPNotFound()
    return _asset(request, name)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``history`` (the points of the last frames) once, then ``frame``
    about once a second until the page goes away or the server stops."""
    feed = request.app[FEED]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    q = feed.watch()
    try:
        await resp.write(b"event: history\ndata: " + feed.history_json() + b"\n\n")
        if feed.latest is not None:
            await resp.write(b"event: frame\ndata: " + feed.latest + b"\n\n")
        while True:
            data = await q.get()
            if data is None:  # the server is stopping
                break
            await resp.write(b"event: frame\ndata: " + data + b"\n\n")
    except ConnectionResetError:
        pass  # the page went away
    finally:
        feed.unwatch(q)
    return resp


def setup(app: web.Application, server: "ClipperServer") -> None:
    """Add the page, its assets and the event stream to the management app."""
    log = EventLog()
    feed = Feed(lambda: sample(server, log))
    app[FEED] = feed
    app[_ASSETS] = _load_assets()

    async def on_startup(_: web.Application) -> None:
        log.attach()

    async def on_shutdown(_: web.Application) -> None:
        await feed.close()  # open streams end now, not at aiohttp's shutdown timeout
        log.detach()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/events", events)
    app.router.add_get("/dashboard/{name}", asset)
