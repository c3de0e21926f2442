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
    "ProtocolError", "Unauthorized", "ClosureNotSerializable",
]


class ClipperError(Exception):
    """Root of every error Clipper raises on purpose."""

    status = 500
    code = "internal_error"

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


class PayloadTooLarge(ClipperError, ValueError):
    status = 413
    code = "payload_too_large"


class Overloaded(ClipperError):
    status = 503
    code = "overloaded"


class PredictionTimeout(ClipperError, TimeoutError):
    status = 503
    code = "prediction_timeout"


class ModelError(ClipperError, RuntimeError):
    """A model container raised while evaluating a batch."""

    status = 502
    code = "model_error"


class StateStoreError(ClipperError, OSError):
    status = 500
    code = "state_store_error"


class StateStoreUnavailable(StateStoreError):
    """The shared state store (Redis) cannot be reached: the change was not made; retry."""

    status = 503
    code = "state_store_unavailable"
