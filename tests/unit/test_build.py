"""The server must run the compiled scheduler: a missing extension is a silent 10x slowdown."""

import importlib
import os

import clipper_core.sched as sched


def test_compiled_scheduler_is_what_the_server_imports():
    assert os.environ.get("CLIPPER_PUREPYTHON", "") in ("", "0"), \
        "the test suite must run against the compiled scheduler"
    assert sched.COMPILED
    assert sched.impl.__name__ == "clipper_core._sched_c"
    assert sched.impl.__file__.endswith((".so", ".pyd")), (
        f"{sched.impl.__file__} is not an extension module: run `make build`")
    assert not hasattr(sched.Query(1, None, 0.0, 1.0, None), "__dict__")


def test_pure_twin_is_the_same_source():
    pure = importlib.import_module("clipper_core._sched_py")
    here = os.path.dirname(pure.__file__)
    with open(os.path.join(here, "_sched_py.py")) as a, open(os.path.join(here, "_sched_c.py")) as b:
        assert a.read() == b.read(), "_sched_c.py is stale: run `make build`"
