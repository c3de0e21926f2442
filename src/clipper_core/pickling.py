"""Why a model function cannot be sent to its container: which captured name cloudpickle
cannot serialise (a lock, an open socket or file, a database connection...).

Only called after ``cloudpickle.dumps`` has failed, so none of this costs anything on a
successful deploy.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Iterator

from .errors import ClosureNotSerializable

#: how deep into captured objects (attributes, items) the search goes, and how wide
MAX_DEPTH = 4
MAX_CHILDREN = 200


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for c in code.co_consts:  # nested functions, lambdas, comprehensions
        if isinstance(c, types.CodeType):
            yield from _code_names(c)


def captured(func: Any) -> list[tuple[str, Any]]:
    """What ``func`` takes with it: closure variables, the globals its code names, default
    arguments; for a partial its function and arguments; for a callable object its
    attributes."""
    out: list[tuple[str, Any]] = []
    if isinstance(func, functools.partial):
        out.append(("<partial function>", func.func))
        out.extend((f"<partial argument {i}>", a) for i, a in enumerate(func.args))
        out.extend((f"<partial argument {k}>", v) for k, v in func.keywords.items())
        return out
    if isinstance(func, types.MethodType):
        out.append(("self", func.__self__))
        func = func.__func__
    if not isinstance(func, types.FunctionType):  # a callable object: what it holds
        return [("self" + k, v) for k, v in _children(func)]
    code = func.__code__
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            out.append((name, cell.cell_contents))
        except ValueError:  # an empty cell
            pass
    g = func.__globals__
    for name in dict.fromkeys(_code_names(code)):
        if name in g:
            out.append((name, g[name]))
    params = code.co_varnames[:code.co_argcount]
    for name, v in zip(params[len(params) - len(func.__defaults__ or ()):],
                       func.__defaults__ or ()):
        out.append((name, v))
    out.extend((func.__kwdefaults__ or {}).items())
    return out


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
        for name, v in captured(value):
            yield f"<{getattr(value, '__name__', 'function')}>.{name}", v
        return
    if isinstance(value, dict):
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_CHILDREN:
                return
            yield f"[{k!r}]", v
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            if i >= MAX_CHILDREN:
                return
            yield f"[{i}]", v
        return
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, (type, types.ModuleType)):
        for i, (k, v) in enumerate(attrs.items()):
            if i >= MAX_CHILDREN:
                return
            yield f".{k}", v


def _fails(dumps: Callable[[Any], bytes], value: Any) -> Exception | None:
    try:
        dumps(value)
    except Exception as e:  # what cloudpickle raises varies: TypeError, PicklingError, ...
        return e
    return None


def find_unpicklable(func: Any, dumps: Callable[[Any], bytes]) -> tuple[str, Any, Exception] | None:
    """The innermost captured name (``"db"``, ``"model._lock"``) whose value ``dumps`` cannot
    serialise, with that value and the error; None when no single captured value fails."""
    for name, value in captured(func):
        err = _fails(dumps, value)
        if err is None:
            continue
        path, depth = name, 0
        while depth < MAX_DEPTH:
            for sub, v in _children(value):
                e = _fails(dumps, v)
                if e is not None:
                    path += sub if not sub.startswith("<") else "." + sub
                    value, err = v, e
                    break
            else:
                break
            depth += 1
        return path, value, err
    return None


def unpicklable_error(func: Any, dumps: Callable[[Any], bytes],
                      cause: Exception) -> ClosureNotSerializable:
    """The error to raise when ``dumps(func)`` failed with ``cause``."""
    fname = getattr(func, "__qualname__", None) or type(func).__name__
    found = find_unpicklable(func, dumps)
    if found is None:
        return ClosureNotSerializable(
            f"model function {fname!r} cannot be sent to its container: cloudpickle cannot "
            f"serialise it ({type(cause).__name__}: {cause}); capture only plain data, arrays "
            "and objects that pickle")
    path, value, err = found
    t = type(value)
    what = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return ClosureNotSerializable(
        f"model function {fname!r} cannot be sent to its container: it captures '{path}' "
        f"(a {what}), which cannot be serialised ({type(err).__name__}: {err}). A lock, socket, "
        "open file or connection cannot travel: create it inside the function, or on its "
        "first call (a global set to None that the function fills in), and capture only plain "
        "data, arrays and objects that pickle")
