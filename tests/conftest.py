import itertools
import os

import pytest

from clipper_core.testing import ClipperProcess

_names = itertools.count(1)


@pytest.fixture
def unique():
    """A fresh DNS-1123 name per call: unique("app") -> "app-7"."""
    return lambda prefix="t": f"{prefix}-{os.getpid() % 1000}-{next(_names)}"


@pytest.fixture(scope="session")
def clipper():
    """One real Clipper process (random ports, its own state dir) shared by a test session."""
    c = ClipperProcess()
    c.start()
    yield c
    c.close()


@pytest.fixture
def fresh_clipper():
    """A real Clipper process of the test's own, for tests that break or restart it."""
    c = ClipperProcess()
    c.start()
    yield c
    c.close()


# ---------------------------------------------------------------- the docker backend
@pytest.fixture(scope="session")
def docker_image():
    """The runtime image of the docker backend, built once per test session (about 40 s cold;
    its tag is a hash of its inputs, so a later session reuses it).  No Docker Engine is a
    failure that says how to get one."""
    from clipper_core.containers import images
    from clipper_core.containers.docker import connect
    from clipper_core.errors import ClipperError

    try:
        client = connect()
        tag = images.build_runtime(client)
    except ClipperError as e:
        pytest.fail(f"the docker backend tests need a Docker Engine and root for mmdebstrap: "
                    f"{e.cause}", pytrace=False)
    client.close()
    return tag


@pytest.fixture(scope="session")
def swarm(docker_image):
    """A swarm this engine manages: a single-node one initialised here (and left again at the
    end of the session) when the engine is in none; an existing swarm is used and left as is.
    Yields the runtime image's tag."""
    import subprocess

    import docker

    from clipper_core.testing import gwbridge_exists, leave_swarm

    client = docker.from_env()
    state = client.info().get("Swarm", {}).get("LocalNodeState")
    client.close()
    had_gwbridge = gwbridge_exists()
    mine = state == "inactive"
    if mine:
        p = subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            pytest.fail(f"the swarm backend tests need `docker swarm init` to work: "
                        f"{p.stderr.strip()}", pytrace=False)
    elif state != "active":
        pytest.fail(f"the swarm backend tests need this engine in no swarm or as a swarm "
                    f"manager; its swarm state is {state!r}", pytrace=False)
    try:
        yield docker_image
    finally:
        if mine:
            leave_swarm(remove_gwbridge=not had_gwbridge)
