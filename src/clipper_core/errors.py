"""Typed errors.  Each class carries its HTTP status and its wire code; one middleware maps them.

Subclasses also inherit the matching built-in so that callers can catch them either way
(``UnknownApp`` is a ``LookupError``, ``PredictionTimeout`` a ``TimeoutError``).
"""

from __future__ import annotations

from clipper_rpc.errors import ProtocolError

__all__ = [
    "ClipperError", "BadRequest", "MalformedJSON", "MissingField", "InvalidInput",
    "UnknownVersion", "NotFound", "UnknownApp", "UnknownModel", "Conflict", "PayloadTooLarge",
    "Overloaded", "PredictionTimeout", "ModelError", "StateStoreError", "ConfigError",
    "ProtocolError", "Unauthorized", "ClosureNotSerializable", "Forbidden",
    "UnsupportedMediaType", "RequestTimeout",
]


class ClipperError(Exception):
    """Root of every error Clipper raises on purpose."""

    status = 500
    code = "internal_error"
    #: HTTP headers of the answer (``Retry-After`` of a refusal)
    headers: dict = {}

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause

    def to_json(self) -> dict:
        return {"error": self.code, "cause": self.cause}


class BadRequest(ClipperError, ValueError):
    status = 400
    code = "bad_request"


class MalformedJSON(BadRequest):
    code = "malformed_json"


class MissingField(BadRequest):
    code = "missing_field"


class InvalidInput(BadRequest):
    code = "invalid_input"


class UnknownVersion(BadRequest, LookupError):
    code = "unknown_version"


class ConfigError(BadRequest):
    code = "invalid_configuration"


class ClosureNotSerializable(ConfigError, TypeError):
    """A model function captures something that cannot be sent to its container."""

    code = "closure_not_serializable"


class Unauthorized(ClipperError, PermissionError):
    status = 401
    code = "unauthorized"


class Forbidden(ClipperError, PermissionError):
    status = 403
    code = "forbidden"


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "unsupported_media_type"


class NotFound(ClipperError, LookupError):
    status = 404
    code = "not_found"


class UnknownApp(NotFound):
    code = "unknown_application"


class UnknownModel(NotFound):
    code = "unknown_model"


class Conflict(ClipperError):
    status = 409
    code = "conflict"


class RequestTimeout(BadRequest, TimeoutError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ClipperError, ValueError):
    status = 413
    code = "payload_too_large"


class Overloaded(ClipperError):
    status = 503
    code = "overloaded"

    def __init__(self, cause: str, retry_after: str | None = None) -> None:
        super().__init__(cause)
        if retry_after is not None:
            self.headers = {"Retry-After": retry_after}


class PredictionTimeout(ClipperError, TimeoutError):
    status = 503
    code = "prediction_timeout"


class ModelError(ClipperError, RuntimeError):
    """A model container raised while evaluating a batch."""

    status = 502
    code = "model_error"


class DeploymentTimeout(ClipperError, TimeoutError):
    """A deployment change made through a frontend that does not deploy (several frontends)
    did not take effect there in time: the deploying frontend is gone or slow."""

    status = 504
    code = "deployment_timeout"


class StateStoreError(ClipperError, OSError):
    status = 500
    code = "state_store_error"


def brief(value: object, limit: int = 60) -> str:
    """How an error message shows a value a client sent: a short scalar as itself, anything
    else by its kind.  Never ``repr()`` of a whole value: a deeply nested one raises
    RecursionError, a large one would be copied into the answer and the log."""
    if value is None or isinstance(value, (bool, int, float)):
        s = repr(value)
    elif isinstance(value, str):
        s = repr(value[:limit]) + ("..." if len(value) > limit else "")
    else:
        kind = {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
        return kind
    return s if len(s) <= limit + 5 else s[:limit] + "..."


class StateStoreUnavailable(StateStoreError):
    """The shared state store (Redis) cannot be reached: the change was not made; retry."""

    status = 503
    code = "state_store_unavailable"
