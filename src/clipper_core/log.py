"""Named loggers, one per concern.  Use %-style lazy arguments."""

import logging
import time

server = logging.getLogger("clipper.server")
access = logging.getLogger("clipper.access")
rpc = logging.getLogger("clipper.rpc")
batching = logging.getLogger("clipper.batching")
container = logging.getLogger("clipper.container")
state = logging.getLogger("clipper.state")


class RateLimitedLog:
    """At most one line per ``interval_s`` for one kind of refusal, with the count since."""

    def __init__(self, logger, interval_s: float = 5.0) -> None:
        self._log = logger
        self._interval = interval_s
        self._last = -1e9
        self._suppressed = 0
        self.count = 0

    def warning(self, fmt: str, *args) -> None:
        self.log(logging.WARNING, fmt, *args)

    def info(self, fmt: str, *args) -> None:
        self.log(logging.INFO, fmt, *args)

    def log(self, level: int, fmt: str, *args) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            fmt += " (and %d more like it since the last such line)"
            args = (*args, self._suppressed)
        self._last = now
        self._suppressed = 0
        self._log.log(level, fmt, *args)


class _RateLimitFilter(logging.Filter):
    """Lets at most one record per ``interval_s`` through per (logger, message format)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        super().__init__()
        self._interval = interval_s
        self._last: dict[tuple, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg if isinstance(record.msg, str) else type(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self._interval:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log is noisy at thousands of queries per second
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiohttp logs each request it cannot parse (with a traceback): one line per 5 s per kind
    # is enough to see an attack, and the log does not grow with it
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access"):
        logging.getLogger(name).addFilter(_RateLimitFilter())
