"""The WebSocket opening handshake's pieces (RFC 6455 4.2.2): the sans-I/O
core that checks it, and the 101 answer.

:class:`~hubbub.transport.http.HttpConnection` decides when to upgrade;
this module builds what the upgrade needs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import State

from .messages import http_date
from .websocket import HubbubServerProtocol

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("hubbub.http")


def switching_protocols(
    accept: str, extensions_header: str | None, protocol_header: str | None
) -> bytes:
    """RFC 6455 4.2.2, step 5: the 101 answer to an accepted handshake.

    Built here rather than by websockets' accept() + Response.serialize(),
    which cost a third of the server's CPU time per handshake (Headers
    objects, a Date formatted each time); the values are websockets' own.
    """
    head = [
        "HTTP/1.1 101 Switching Protocols\r\nDate: ",
        http_date(),
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept,
    ]
    if extensions_header is not None:
        head += ("\r\nSec-WebSocket-Extensions: ", extensions_header)
    if protocol_header is not None:
        head += ("\r\nSec-WebSocket-Protocol: ", protocol_header)
    head.append("\r\n\r\n")
    return "".join(head).encode("latin-1")


def ws_protocol(settings: Settings, subprotocols: list[str]) -> HubbubServerProtocol:
    """The sans-I/O WebSocket core for one connection's handshake and frames."""
    extensions = (
        [
            ServerPerMessageDeflateFactory(
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
        ]
        if settings.compression
        else None
    )
    return HubbubServerProtocol(
        extensions=extensions,
        subprotocols=list(subprotocols) or None,
        max_size=settings.max_message_size,
        logger=_quiet,
        # The head was parsed by httptools already: the core starts at
        # the frame stage and is given the parsed request.
        state=State.OPEN,
    )


def is_websocket(headers: dict[str, str]) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """`websockets` logs each connection at INFO; hubbub logs its own events."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and log.isEnabledFor(level)


_quiet = _QuietLogger(logging.getLogger("hubbub.websocket.core"), {})
