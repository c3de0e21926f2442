"""The server must run the compiled scheduler: a missing extension is a silent 10x slowdown.

The whole suite runs twice (``make test``): against the compiled modules, and against the
pure-Python twins with ``CLIPPER_PUREPYTHON=1``; these tests check that each run really uses
what it claims to.
"""

import importlib
import os

import clipper_core.sched as sched

PURE = os.environ.get("CLIPPER_PUREPYTHON", "") not in ("", "0")


def test_the_run_uses_the_implementation_it_names():
    import clipper_core.cache as cache

    assert sched.COMPILED is (not PURE) and cache.COMPILED is (not PURE)
    want = "py" if PURE else "c"
    assert sched.impl.__name__ == f"clipper_core._sched_{want}"
    assert cache.impl.__name__ == f"clipper_core._cache_{want}"


def test_the_scheduler_extension_is_built():
    # in both runs: the pure run must not hide a missing or stale extension
    impl = importlib.import_module("clipper_core._sched_c")
    assert impl.__file__.endswith((".so", ".pyd")), (
        f"{impl.__file__} is not an extension module: run `make build`")
    assert not hasattr(impl.Query(1, None, 0.0, 1.0, None), "__dict__")


def test_pure_twin_is_the_same_source():
    pure = importlib.import_module("clipper_core._sched_py")
    here = os.path.dirname(pure.__file__)
    with open(os.path.join(here, "_sched_py.py")) as a, open(os.path.join(here, "_sched_c.py")) as b:
        assert a.read() == b.read(), "_sched_c.py is stale: run `make build`"


def test_the_cache_extension_is_built_and_the_server_uses_the_named_one():
    import clipper_core.cache as cache
    import clipper_core.predict as predict

    impl = importlib.import_module("clipper_core._cache_c")
    assert impl.__file__.endswith((".so", ".pyd")), (
        f"{impl.__file__} is not an extension module: run `make build`")
    assert predict.PredictionCache is cache.impl.PredictionCache
    # the .pxd was picked up: extension types with C fields, no instance __dict__
    c = impl.PredictionCache(1024)
    assert not hasattr(c, "__dict__")
    assert not hasattr(c.start_flight(b"k", None), "__dict__")
    assert type(impl.output_size).__name__ == "cython_function_or_method"


def test_pure_cache_twin_is_the_same_source():
    pure = importlib.import_module("clipper_core._cache_py")
    here = os.path.dirname(pure.__file__)
    with open(os.path.join(here, "_cache_py.py")) as a, open(os.path.join(here, "_cache_c.py")) as b:
        assert a.read() == b.read(), "_cache_c.py is stale: run `make build`"
