"""Build script: compiles the Cython hot path.

The scheduler core and the prediction cache are written once as typed, Cython-friendly Python
(``_sched_py.py``, ``_cache_py.py``).  At build time each is copied to ``*_c.py`` beside a
hand-written ``*_c.pxd`` that adds ``cdef class`` declarations and C types, and the copy is
compiled.  The pure module stays importable as the reference twin (``CLIPPER_PUREPYTHON=1``).
"""

import os
import shutil

from setuptools import Extension, find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join("src", "clipper_core")

# (pure single source, compiled module name)
TWINS = [
    ("_sched_py", "_sched_c"),
    ("_cache_py", "_cache_c"),
]


def _twin_sources():
    exts = []
    for pure, compiled in TWINS:
        src = os.path.join(HERE, CORE, pure + ".py")
        dst = os.path.join(HERE, CORE, compiled + ".py")
        if not os.path.exists(src):
            continue
        with open(src, "rb") as f:
            body = f.read()
        old = None
        if os.path.exists(dst):
            with open(dst, "rb") as f:
                old = f.read()
        if old != body:  # keep the mtime when unchanged so cythonize can skip it
            shutil.copyfile(src, dst)
        exts.append(
            Extension(f"clipper_core.{compiled}", [os.path.join(CORE, compiled + ".py")])
        )
    return exts


def _extensions():
    from Cython.Build import cythonize

    return cythonize(
        _twin_sources(),
        compiler_directives={"language_level": "3", "embedsignature": True},
        quiet=True,
    )


setup(
    package_dir={"": "src", "model_runtimes": "model_runtimes"},
    packages=find_packages("src") + [
        "model_runtimes." + p if p else "model_runtimes"
        for p in [""] + sorted(
            d for d in os.listdir(os.path.join(HERE, "model_runtimes"))
            if os.path.isfile(os.path.join(HERE, "model_runtimes", d, "__init__.py"))
        )
    ],
    package_data={"clipper_core": ["*.pxd"], "model_runtimes": ["*/Dockerfile"],
                  # the dashboard's page, JavaScript modules and style sheet
                  "clipper_core.dashboard": ["static/*"]},
    ext_modules=_extensions(),
    zip_safe=False,
)
