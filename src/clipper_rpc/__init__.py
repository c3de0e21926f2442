"""Clipper RPC: the wire protocol, its ZeroMQ transports and the model-wrapper library.

A model container needs only this package (plus numpy, msgpack and pyzmq).
"""

from .container import Model, serve, serve_model
from .errors import ProtocolError
from .protocol import INPUT_TYPES, PROTOCOL_VERSION

__all__ = ["Model", "serve", "serve_model", "ProtocolError", "INPUT_TYPES",
           "PROTOCOL_VERSION"]
