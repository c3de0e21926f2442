"""A real redis-server for the tests (Debian's), on a random port with a temp dir, stopped by
pid."""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest
import redis

from clipper_core.testing import free_port, wait_for




class RedisServer:
    """A redis-server child process; its data survives a kill (append-only file, fsync
    always), so that it can be killed and started again on the same port and dir."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(self.binary, os.X_OK):
            pytest.fail("redis-server is not installed: `apt-get install redis-server` (it is "
                        "listed in .ci/system-packages.txt, which `make test` installs)")
        self.dir = tempfile.TemporaryDirectory(prefix="clipper-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             self.dir.name, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--daemonize", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        r = redis.Redis.from_url(self.url)

        def up():
            try:
                return r.ping()
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited at start"
                return False
        wait_for(up, 10, "redis-server to answer PING")
        r.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.kill()
        self.dir.cleanup()
