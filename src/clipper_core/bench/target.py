"""What clipper-bench sends, and what it reads back from an answer.

Three kinds of target, told apart by the URL path unless ``--protocol`` says:

* ``clipper``: ``/{app}/predict``, body ``{"input": [...]}``; an answer may carry
  ``"default": true`` (the app's default output was returned) and
  ``"cache_hit": true``; the server's stats are at ``/stats`` on the same host.
* ``oip``: Open Inference Protocol v2, ``/v2/models/{name}[/versions/{v}]/infer``,
  body ``{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, N], "data": [...]}]}``;
  the flags sit in the answer's ``parameters`` object.
* ``generic``: any URL, with a body from ``--body-template``; flags are looked for
  in both places.

A body template may hold the placeholder ``{{i}}``, replaced by a counter that is
unique across the requests of one load level.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import _json

__all__ = [
    "DEFAULT_INPUT",
    "FLAG_CACHE_HIT",
    "FLAG_DEFAULT",
    "PROTOCOLS",
    "BenchConfigError",
    "Target",
    "answer_flags",
    "build_target",
    "detect_protocol",
]

PROTOCOLS = ("auto", "clipper", "oip", "generic")
PLACEHOLDER = b"{{i}}"
DEFAULT_INPUT: list[float] = [1.0, 2.0, 3.0]

FLAG_DEFAULT = 1
FLAG_CACHE_HIT = 2

_OIP_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer/?$")
_CLIPPER_PATH = re.compile(r"^/[^/]+/predict/?$")


class BenchConfigError(ValueError):
    """A command line or configuration that clipper-bench cannot run; exit status 2."""


def detect_protocol(url: str) -> str:
    """``"oip"``, ``"clipper"`` or ``"generic"`` from the path of ``url``."""
    path = urlsplit(url).path
    if _OIP_PATH.match(path):
        return "oip"
    if _CLIPPER_PATH.match(path):
        return "clipper"
    return "generic"


@dataclass(frozen=True)
class Target:
    """A picklable description of the request to send (it travels to worker processes)."""

    url: str
    protocol: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    body_parts: tuple[bytes, ...] = (b"{}",)
    stats_url: str | None = None
    description: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def templated(self) -> bool:
        return len(self.body_parts) > 1

    def body(self, i: int) -> bytes:
        """The body of request number ``i``."""
        if len(self.body_parts) == 1:
            return self.body_parts[0]
        return str(i).encode().join(self.body_parts)


def _parse_json_arg(name: str, text: str) -> Any:
    try:
        return _json.loads(text)
    except _json.JSONDecodeError as exc:
        raise BenchConfigError(f"{name} must be JSON, got {text[:60]!r}: {exc}") from None


def _oip_body(value: Any) -> dict[str, Any]:
    import numpy as np

    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BenchConfigError(
            f"--input must be a JSON list of numbers (or nested lists) for an OIP target, got {value!r:.60}"
        ) from None
    if arr.ndim == 0:
        raise BenchConfigError(f"--input must be a list for an OIP target, got the scalar {value!r}")
    shape = [1, int(arr.shape[0])] if arr.ndim == 1 else [int(d) for d in arr.shape]
    return {"inputs": [{"name": "input", "datatype": "FP64", "shape": shape, "data": arr.ravel().tolist()}]}


def _read_template(spec: str) -> bytes:
    if os.path.isfile(spec):
        with open(spec, "rb") as fh:
            raw = fh.read()
        origin = f"file {spec!r}"
    else:
        raw = spec.encode()
        origin = "the --body-template text"
    try:
        _json.loads(raw.replace(PLACEHOLDER, b"0"))
    except _json.JSONDecodeError as exc:
        raise BenchConfigError(
            f"--body-template must be a JSON document (or a file holding one) once {{{{i}}}} is replaced "
            f"by a number; {origin} is not: {exc}"
        ) from None
    return raw


def stats_url_for(url: str) -> str:
    """``{scheme}://{host}:{port}/stats`` of the server behind ``url``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/stats", "", ""))


def build_target(
    url: str,
    *,
    protocol: str = "auto",
    input_json: str | None = None,
    body_template: str | None = None,
    headers: Sequence[str] = (),
    method: str = "POST",
    stats_url: str | None = "auto",
) -> Target:
    """A :class:`Target` from the command line's words.

    ``stats_url`` is ``"auto"`` (Clipper's ``/stats`` for a Clipper target, none
    otherwise), ``"none"``/``None``, or a URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BenchConfigError(f"--url must be an http:// or https:// URL with a host, got {url!r}")
    if protocol not in PROTOCOLS:
        raise BenchConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    kind = detect_protocol(url) if protocol == "auto" else protocol
    if not re.fullmatch(r"[A-Za-z]+", method):
        raise BenchConfigError(f"--method must be an HTTP method such as POST, got {method!r}")

    hdrs: list[tuple[str, str]] = []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise BenchConfigError(f"--header must look like 'Name: value', got {h!r}")
        hdrs.append((name.strip(), value.strip()))
    if not any(n.lower() == "content-type" for n, _ in hdrs):
        hdrs.append(("Content-Type", "application/json"))

    if body_template is not None:
        raw = _read_template(body_template)
    else:
        if kind == "generic":
            raise BenchConfigError(
                f"the URL path {parts.path!r} is neither a Clipper app (/{{app}}/predict) nor an OIP model "
                "(/v2/models/{name}/infer): give --body-template, or --protocol clipper|oip"
            )
        value = DEFAULT_INPUT if input_json is None else _parse_json_arg("--input", input_json)
        raw = _json.dumps({"input": value} if kind == "clipper" else _oip_body(value))

    if stats_url == "auto":
        resolved = stats_url_for(url) if kind == "clipper" else None
    elif stats_url in (None, "", "none"):
        resolved = None
    else:
        resolved = stats_url

    return Target(
        url=url,
        protocol=kind,
        method=method.upper(),
        headers=tuple(hdrs),
        body_parts=tuple(raw.split(PLACEHOLDER)),
        stats_url=resolved,
        description={"url": url, "protocol": kind, "method": method.upper(), "stats_url": resolved},
    )


def answer_flags(body: bytes, protocol: str) -> int:
    """``FLAG_DEFAULT`` / ``FLAG_CACHE_HIT`` bits read from a successful answer."""
    # Most answers carry neither word: skip the parse for them.
    if b"default" not in body and b"cache_hit" not in body:
        return 0
    try:
        doc = _json.loads(body)
    except _json.JSONDecodeError:
        return 0
    if not isinstance(doc, dict):
        return 0
    places: list[Any] = []
    if protocol in ("clipper", "generic"):
        places.append(doc)
    if protocol in ("oip", "generic"):
        places.append(doc.get("parameters"))
    flags = 0
    for place in places:
        if isinstance(place, dict):
            if place.get("default") is True:
                flags |= FLAG_DEFAULT
            if place.get("cache_hit") is True:
                flags |= FLAG_CACHE_HIT
    return flags
