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


def test_compiled_cache_is_what_the_server_imports():
    import clipper_core.cache as cache
    import clipper_core.predict as predict

    assert cache.COMPILED
    assert cache.impl.__name__ == "clipper_core._cache_c"
    assert cache.impl.__file__.endswith((".so", ".pyd")), (
        f"{cache.impl.__file__} is not an extension module: run `make build`")
    assert predict.PredictionCache is cache.impl.PredictionCache
    # the .pxd was picked up: extension types with C fields, no instance __dict__
    c = cache.PredictionCache(1024)
    assert not hasattr(c, "__dict__")
    assert not hasattr(c.start_flight(b"k", None), "__dict__")
    assert type(cache.impl.output_size).__name__ == "cython_function_or_method"


def test_pure_cache_twin_is_the_same_source():
    pure = importlib.import_module("clipper_core._cache_py")
    here = os.path.dirname(pure.__file__)
    with open(os.path.join(here, "_cache_py.py")) as a, open(os.path.join(here, "_cache_c.py")) as b:
        assert a.read() == b.read(), "_cache_c.py is stale: run `make build`"
