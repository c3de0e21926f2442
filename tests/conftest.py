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
