"""Named loggers, one per concern.  Use %-style lazy arguments."""

import logging

server = logging.getLogger("clipper.server")
access = logging.getLogger("clipper.access")
rpc = logging.getLogger("clipper.rpc")
batching = logging.getLogger("clipper.batching")
container = logging.getLogger("clipper.container")
state = logging.getLogger("clipper.state")


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log is noisy at thousands of queries per second
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
