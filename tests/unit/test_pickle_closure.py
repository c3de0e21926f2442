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


# ------------------------------------------------------------------ what cannot be sent
import socket
import threading

import pytest

from clipper_core.errors import ClipperError, ClosureNotSerializable

GLOBAL_LOCK = threading.Lock()


def uses_a_global_lock(inputs):
    with GLOBAL_LOCK:
        return [0 for _ in inputs]


class Model:
    def __init__(self):
        self.weights = [1.0, 2.0]
        self._lock = threading.RLock()

    def __call__(self, inputs):
        return [sum(self.weights) for _ in inputs]


def test_a_captured_lock_is_named():
    lock = threading.Lock()

    def predict(inputs):
        with lock:
            return [1 for _ in inputs]

    with pytest.raises(ClosureNotSerializable) as e:
        pickle_closure(predict)
    msg = str(e.value)
    assert "'lock'" in msg and "_thread.lock" in msg and "create it inside the function" in msg
    assert "predict" in msg
    assert isinstance(e.value, TypeError) and isinstance(e.value, ClipperError)  # both ways
    assert e.value.status == 400


def test_a_global_lock_and_a_socket_are_named():
    with pytest.raises(ClosureNotSerializable, match="'GLOBAL_LOCK'"):
        pickle_closure(uses_a_global_lock)
    sock = socket.socket()
    try:
        def predict(inputs, timeout=sock):
            return [timeout.fileno() for _ in inputs]

        with pytest.raises(ClosureNotSerializable, match=r"'timeout' \(a socket\.socket\)"):
            pickle_closure(predict)
    finally:
        sock.close()


def test_the_path_inside_a_captured_object_is_named():
    model = Model()

    def predict(inputs):
        return model(inputs)

    with pytest.raises(ClosureNotSerializable, match=r"'model\._lock' \(a _thread\.RLock\)"):
        pickle_closure(predict)
    with pytest.raises(ClosureNotSerializable, match=r"'self\._lock'"):
        pickle_closure(Model())  # a callable object: its own attribute
    table = {"fine": 1, "bad": threading.Lock()}

    def lookup(inputs):
        return [table["fine"] for _ in inputs]

    with pytest.raises(ClosureNotSerializable, match=r"'table\['bad'\]'"):
        pickle_closure(lookup)


def test_what_pickles_still_pickles():
    weights = [1.0, 2.0]

    def predict(inputs):
        return [sum(weights) for _ in inputs]

    assert cloudpickle.loads(pickle_closure(predict))([[0]]) == [3.0]
