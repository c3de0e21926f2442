"""Container images built on this machine, never pulled: the base and the runtime image.

The **base image** is a Debian root filesystem (``mmdebstrap --variant=essential`` with
``python3`` and ``libstdc++6``) holding the *host's* versions of the Python packages a replica
needs, installed from wheels downloaded on the host, so that a closure pickled by the frontend
(cloudpickle 3, numpy 2) loads in the container.  It is byte-compiled with
``--invalidation-mode unchecked-hash``: mmdebstrap clamps file times, so timestamp-checked
bytecode would look stale and every container start would recompile numpy.  The root
filesystem is handed to ``docker import``.

The **runtime image** adds ``clipper_rpc`` and ``model_runtimes`` to the base with
``docker build --network none`` from a context that holds just those (a few kB).

Both are tagged by a hash of their inputs (package versions, Python version, source files):
a later build with the same inputs finds the tag and reuses the image.  Building needs root
(mmdebstrap's root mode) and Debian's mirror through apt; a machine without either gets a
:class:`~clipper_core.errors.ConfigError` saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

from .. import log
from ..errors import ConfigError

#: what a replica imports: the wire library's dependencies and cloudpickle for closures
BASE_PACKAGES = ("numpy", "pyzmq", "msgpack", "cloudpickle")
DEBIAN_PACKAGES = ("python3", "libstdc++6")
SUITE = "bookworm"
LABEL = "clipper.image"
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
_REPO = os.path.dirname(_ROOT) if os.path.basename(_ROOT) == "src" else _ROOT

RUNTIME_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY clipper_rpc /opt/clipper/clipper_rpc
COPY model_runtimes /opt/clipper/model_runtimes
RUN ["python3", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", "/opt/clipper"]
ENV PYTHONPATH=/opt/clipper PYTHONUNBUFFERED=1
LABEL clipper.image=runtime
"""


def host_versions(packages: tuple = BASE_PACKAGES) -> dict[str, str]:
    """The installed version of each package in the frontend's own environment."""
    out = {}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            raise ConfigError(f"cannot build the base image: Python package {p!r} is not "
                              "installed in the frontend's environment") from None
    return out


def base_tag(extra_packages: tuple = ()) -> str:
    """``clipper-base:<hash of the inputs>``."""
    versions = host_versions(BASE_PACKAGES + tuple(extra_packages))
    h = hashlib.sha256(repr((SUITE, DEBIAN_PACKAGES, sys.version_info[:2],
                             sorted(versions.items()), 2)).encode()).hexdigest()[:16]
    return f"clipper-base:{h}"


def _runtime_sources() -> list[tuple[str, str]]:
    """(path in the image context, path on disk) of every file the runtime image holds."""
    rpc = os.path.join(_ROOT, "src", "clipper_rpc") if os.path.isdir(
        os.path.join(_ROOT, "src", "clipper_rpc")) else os.path.dirname(
        __import__("clipper_rpc").__file__)
    import model_runtimes

    rt = os.path.dirname(model_runtimes.__file__)
    files = []
    for name, top in (("clipper_rpc", rpc), ("model_runtimes", rt)):
        for d, dirs, fs in os.walk(top):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(fs):
                if f.endswith(".py"):
                    p = os.path.join(d, f)
                    files.append((os.path.join(name, os.path.relpath(p, top)), p))
    return files


def runtime_tag(base: str) -> str:
    h = hashlib.sha256(base.encode() + RUNTIME_DOCKERFILE.encode())
    for rel, path in _runtime_sources():
        h.update(rel.encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return f"clipper-runtime:{h.hexdigest()[:16]}"


def _run(argv: list, what: str, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise ConfigError(f"cannot {what}: {argv[0]} is not installed") from None
    if p.returncode != 0:
        raise ConfigError(f"cannot {what}: `{' '.join(map(str, argv[:3]))} ...` exited with "
                          f"{p.returncode}: {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


@contextlib.contextmanager
def _build_lock(tag: str):
    """One build of an image at a time on this machine (two frontends, or a test session
    and a benchmark, starting at once build it once)."""
    path = os.path.join(tempfile.gettempdir(), "clipper-image-" + tag.replace(":", "-")
                        + ".lock")
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_base(client, extra_packages: tuple = (), *, wheel_dir: str | None = None) -> str:
    """The base image's tag, building it first if no image carries it (about 40 s)."""
    tag = base_tag(extra_packages)
    if image_exists(client, tag):
        return tag
    with _build_lock(tag):
        if image_exists(client, tag):  # another process built it meanwhile
            return tag
        return _build_base(client, tag, extra_packages, wheel_dir)


def _build_base(client, tag: str, extra_packages: tuple, wheel_dir: str | None) -> str:
    if os.geteuid() != 0:
        raise ConfigError("cannot build the base image: mmdebstrap's root mode needs root "
                          f"(or build it once as root; its tag is {tag})")
    versions = host_versions(BASE_PACKAGES + tuple(extra_packages))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clipper-base-") as tmp:
        wheels = wheel_dir or os.path.join(tmp, "wheels")
        os.makedirs(wheels, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
              "--dest", wheels, *(f"{p}=={v}" for p, v in versions.items())],
             "download the wheels of the base image's Python packages")
        dist = "/usr/lib/python3/dist-packages"
        rootfs = os.path.join(tmp, "rootfs.tar")
        # the hooks run as root on the host with $1 the new root: pip of the host installs
        # the wheels (same Python minor version), the container's own python compiles them
        install = (f'{sys.executable} -m pip install -q --no-index --no-deps --find-links '
                   f'{wheels} --target "$1{dist}" '
                   + " ".join(f"{p}=={v}" for p, v in versions.items()))
        compile_ = (f'chroot "$1" python3 -m compileall -q --invalidation-mode unchecked-hash '
                    f'{dist} /usr/lib/python3.11')
        _run(["mmdebstrap", "--quiet", "--variant=essential",
              "--include=" + ",".join(DEBIAN_PACKAGES),
              f"--customize-hook={install}", f"--customize-hook={compile_}",
              SUITE, rootfs], "build the base root filesystem with mmdebstrap", timeout=900)
        _run(["docker", "import", "--change", f"LABEL {LABEL}=base",
              "--change", "ENV PYTHONUNBUFFERED=1", rootfs, tag],
             "import the base root filesystem into Docker", timeout=300)
    size = client.images.get(tag).attrs.get("Size", 0)
    log.container.info("built the base image %s in %.1f s (%.0f MB)", tag,
                       time.monotonic() - t0, size / 1e6)
    return tag


def build_runtime(client, base: str | None = None) -> str:
    """The runtime image's tag (base + clipper_rpc + model_runtimes), building it (and the
    base) first where missing."""
    base = base or build_base(client)
    tag = runtime_tag(base)
    if image_exists(client, tag):
        return tag
    with _build_lock(tag):
        if image_exists(client, tag):
            return tag
        return _build_runtime(client, base, tag)


def _build_runtime(client, base: str, tag: str) -> str:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clipper-runtime-") as ctx:
        for rel, path in _runtime_sources():
            os.makedirs(os.path.join(ctx, os.path.dirname(rel)), exist_ok=True)
            shutil.copyfile(path, os.path.join(ctx, rel))
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(RUNTIME_DOCKERFILE)
        _run(["docker", "build", "--network", "none", "-q", "--build-arg", f"BASE={base}",
              "-t", tag, ctx], "build the runtime image", timeout=600)
    log.container.info("built the runtime image %s in %.1f s", tag, time.monotonic() - t0)
    return tag


def _ancestors(path: str) -> list[str]:
    """The directories above ``path`` (absolute), outermost first, without ``/``."""
    out = []
    d = os.path.dirname(path)
    while d not in ("/", ""):
        out.append(d)
        d = os.path.dirname(d)
    return out[::-1]


def build_with_files(client, base: str, paths: tuple, labels: dict | None = None) -> str:
    """``base`` plus copies of the host files (or directories) ``paths`` at the same paths:
    how a closure reaches a replica on a node where the host's bind mount does not exist.
    Tagged ``clipper-files:<hash of base and contents>``, so a second deploy of the same
    closure reuses it; ``labels`` are added to the image's own.  Blocking.

    The image is one layer on top of ``base``, made as a tar here and handed to the engine
    with ``docker load`` (an image archive whose manifest lists ``base``'s layers, which the
    engine has, and only the new layer's file).  A ``docker build`` or ``docker commit`` of
    the same layer took 3-5 s on an engine with the fuse-overlayfs storage driver, which
    compares the whole root filesystem with its parent to find the change; the load takes
    about 0.1 s on any driver."""
    import docker.errors

    h = hashlib.sha256(base.encode() + repr(sorted((labels or {}).items())).encode())
    files = []
    for top in paths:
        if not os.path.exists(top):
            raise ConfigError(f"cannot bake {top!r} into a replica image: no such file")
        walk = [top] if os.path.isfile(top) else [
            os.path.join(d, f) for d, _, fs in sorted(os.walk(top)) for f in sorted(fs)]
        for path in walk:
            with open(path, "rb") as f:
                h.update(os.path.abspath(path).encode() + hashlib.sha256(f.read()).digest())
            files.append(os.path.abspath(path))
    tag = f"clipper-files:{h.hexdigest()[:16]}"
    if image_exists(client, tag):
        return tag
    with _build_lock(tag), tempfile.TemporaryDirectory(prefix="clipper-files-") as tmp:
        if image_exists(client, tag):
            return tag
        try:
            b = client.api.inspect_image(base)
        except docker.errors.ImageNotFound:
            raise ConfigError(f"cannot bake files into a replica image: no image {base!r}"
                              ) from None
        layer = os.path.join(tmp, "layer.tar")
        with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tf:
            # the files' parent directories with the host's modes (as a bind mount shows
            # them): the engine unpacks a layer into an empty directory, so a parent missing
            # from the tar would become mode 0755 and hide the base's (/tmp is 1777)
            parents = sorted({d for p in files for d in _ancestors(p)})
            for d in parents:
                st = os.stat(d)
                info = tarfile.TarInfo(d.lstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = stat.S_IMODE(st.st_mode)
                info.uid, info.gid = st.st_uid, st.st_gid
                tf.addfile(info)
            for path in files:
                with open(path, "rb") as f:  # a symlink's target, as a copy would take it
                    info = tf.gettarinfo(arcname=path.lstrip("/"), fileobj=f)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0  # the same files make the same layer, on any machine
                    tf.addfile(info, f)
        diff = hashlib.sha256()
        with open(layer, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                diff.update(chunk)
        diff_id = "sha256:" + diff.hexdigest()
        config = dict(b["Config"] or {})
        config["Labels"] = {**(config.get("Labels") or {}), **(labels or {}), LABEL: "files"}
        layers = list(b["RootFS"]["Layers"]) + [diff_id]
        conf = json.dumps({"architecture": b["Architecture"], "os": b["Os"],
                           "created": b["Created"], "config": config,
                           "rootfs": {"type": "layers", "diff_ids": layers}},
                          sort_keys=True).encode()
        name = hashlib.sha256(conf).hexdigest()
        # the base's layers are named but not included: the engine has them, and opens a
        # layer's file only when it lacks the layer
        manifest = [{"Config": f"{name}.json", "RepoTags": [tag],
                     "Layers": [f"{d.split(':', 1)[1]}/layer.tar" for d in layers]}]
        archive = os.path.join(tmp, "image.tar")
        with tarfile.open(archive, "w") as tf:
            tf.add(layer, arcname=f"{diff_id.split(':', 1)[1]}/layer.tar")
            for arc, data in ((f"{name}.json", conf),
                              ("manifest.json", json.dumps(manifest).encode())):
                info = tarfile.TarInfo(arc)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        try:
            with open(archive, "rb") as f:
                for _ in client.api.load_image(f):
                    pass
        except docker.errors.APIError as e:
            raise ConfigError(f"cannot load a replica image with its files baked in "
                              f"({tag}): {e.explanation or e}") from None
    return tag


def build_model_image(client, name: str, version: str, model_data_path: str,
                      base_image: str | None = None, pkgs_to_install: tuple = (),
                      wheel_dir: str | None = None) -> str:
    """An image with a model directory at ``/model`` and extra Python packages, built offline:
    the packages come as wheels downloaded on the host (``pip download``), unpacked inside
    ``docker build --network none``.

    On Clipper's runtime image (``base_image`` None) the entrypoint serves the model
    directory: ``closure.pkl`` there (a cloudpickled function), else the function
    ``predict`` of ``predict.py``.  A ``base_image`` of your own keeps its entrypoint, which
    gets ``--model-name``, ``--model-version``, ``--input-type`` and ``--address``."""
    if not os.path.isdir(model_data_path):
        raise ConfigError(f"model_data_path must be a directory, got {model_data_path!r}")
    entry = None
    if base_image is None:
        base_image = build_runtime(client)
        src = (["--closure", "/model/closure.pkl"]
               if os.path.exists(os.path.join(model_data_path, "closure.pkl"))
               else ["--function", "predict:predict"])
        if src[0] == "--function" and not os.path.exists(
                os.path.join(model_data_path, "predict.py")):
            raise ConfigError(f"{model_data_path} holds neither closure.pkl nor predict.py: "
                              "give the model as one of them, or a base_image that knows it")
        entry = ["python3", "-m", "model_runtimes.python_closure", *src]
    with tempfile.TemporaryDirectory(prefix="clipper-model-") as ctx:
        shutil.copytree(model_data_path, os.path.join(ctx, "model"), symlinks=False)
        os.makedirs(os.path.join(ctx, "wheels"))
        lines = ["ARG BASE", "FROM ${BASE}", "COPY model /model"]
        if pkgs_to_install:
            pkgs = [str(p) for p in pkgs_to_install]
            _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                  "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
                  "--dest", os.path.join(ctx, "wheels"), *pkgs],
                 f"download the wheels of {', '.join(pkgs)}")
            lines += ["COPY wheels /tmp/wheels",
                      "RUN python3 -c \"import sys, zipfile, glob; "
                      "[zipfile.ZipFile(w).extractall('/usr/local/lib/python3.11/"
                      "dist-packages') for w in glob.glob('/tmp/wheels/*.whl')]\" "
                      "&& rm -rf /tmp/wheels"]
        if entry is not None:
            lines += ["ENV PYTHONPATH=/model:/opt/clipper", f"ENTRYPOINT {json.dumps(entry)}"]
        lines += [f"LABEL {LABEL}=model clipper.model={name} clipper.version={version}"]
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write("\n".join(lines) + "\n")
        h = hashlib.sha256()
        for d, _, fs in sorted(os.walk(ctx)):
            for fn in sorted(fs):
                with open(os.path.join(d, fn), "rb") as f:
                    h.update(fn.encode() + hashlib.sha256(f.read()).digest())
        h.update(base_image.encode())
        tag = f"clipper-model-{name}:{version}-{h.hexdigest()[:12]}"
        if not image_exists(client, tag):
            _run(["docker", "build", "--network", "none", "-q", "--build-arg",
                  f"BASE={base_image}", "-t", tag, ctx], f"build the image of {name}:{version}",
                 timeout=600)
    return tag


if __name__ == "__main__":  # python -m clipper_core.containers.images: build (or find) both
    from .docker import connect

    print(build_runtime(connect()))
