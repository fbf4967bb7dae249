"""hubbub: a real-time chat server with a Swoole-style event API."""

# First: modules imported below (the metrics collector) read it.
__version__ = "0.1.0"

from .config import Settings
from .server import WEBSOCKET_OPCODE_BINARY, WEBSOCKET_OPCODE_TEXT, Frame, Server
from .transport.http import Request, Response

__all__ = [
    "WEBSOCKET_OPCODE_BINARY",
    "WEBSOCKET_OPCODE_TEXT",
    "Frame",
    "Request",
    "Response",
    "Server",
    "Settings",
]
