"""Chooses between a compiled Cython module and its pure-Python twin (one source, two builds).

A missing extension is an error, not a silent 10x slowdown: ``CLIPPER_PUREPYTHON=1`` runs the
pure twins on purpose.
"""

import importlib
import os
from types import ModuleType

PURE = os.environ.get("CLIPPER_PUREPYTHON", "") not in ("", "0")


def load(stem: str, what: str) -> ModuleType:
    """``clipper_core._{stem}_c``, or ``_{stem}_py`` when PURE; ``what`` names it in errors."""
    if PURE:
        return importlib.import_module(f"clipper_core._{stem}_py")
    try:
        return importlib.import_module(f"clipper_core._{stem}_c")
    except ImportError as e:  # pragma: no cover - exercised by the build check
        raise ImportError(
            f"clipper_core._{stem}_c is not built: run `make build` (or `pip install -e .`), "
            f"or set CLIPPER_PUREPYTHON=1 to use the slow pure-Python {what}") from e
