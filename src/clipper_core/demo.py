"""The demo application that ``clipper start --demo`` deploys on a fresh state directory."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import cloudpickle

from . import log

if TYPE_CHECKING:
    from .server import ClipperServer

DEMO_APP = "demo"
DEMO_MODEL = "sum"


def demo_sum(inputs: list) -> list:
    """The demo model: the sum of each input vector."""
    return [float(x.sum()) for x in inputs]


async def ensure_demo(server: "ClipperServer") -> None:
    reg = server.registry
    if DEMO_APP not in reg.apps:
        server.add_app(DEMO_APP, "doubles", -1.0, 100_000)
    if DEMO_MODEL not in reg.current:
        blob = base64.b64encode(cloudpickle.dumps(demo_sum)).decode()
        await server.deployments.deploy_closure(DEMO_MODEL, "1", "doubles", blob, num_replicas=1)
    if DEMO_MODEL not in reg.links.get(DEMO_APP, []):
        reg.link(DEMO_APP, DEMO_MODEL)
    log.server.info("demo app %r serves model %r", DEMO_APP, DEMO_MODEL)
