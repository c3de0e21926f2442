"""pickle_closure is called from several threads at once (parallel deploys)."""

import sys
from concurrent.futures import ThreadPoolExecutor

import cloudpickle

from clipper_core.admin import pickle_closure


def local_model(inputs):  # defined in a test file: must travel by value
    return [len(x) for x in inputs]


def test_parallel_pickling_of_closures_from_one_module():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, inside the register/unregister window
    try:
        with ThreadPoolExecutor(8) as pool:
            blobs = list(pool.map(lambda _: pickle_closure(local_model), range(400)))
    finally:
        sys.setswitchinterval(old)
    # every one travelled by value (by reference, a container could not import it)
    assert all(b"_make_function" in b for b in blobs)
    assert all(cloudpickle.loads(b)([[1, 2], [3]]) == [2, 1] for b in blobs)
