"""Errors raised by the wire protocol. ``clipper_rpc`` never imports ``clipper_core``."""


class ProtocolError(ValueError):
    """A message on the wire does not follow the Clipper RPC protocol.

    Raised by :func:`clipper_rpc.protocol.decode` for garbage, truncated or oversize frames and
    for a protocol version this side does not speak.  ``code`` is the wire code.
    """

    code = "protocol_error"
