"""The WebSocket opening handshake's pieces (RFC 6455 4.2.2): the sans-I/O
core that checks it, and the 101 answer.

:class:`~hubbub.transport.http.HttpConnection` decides when to upgrade;
this module builds what the upgrade needs.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import websockets.protocol
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


#: RFC 6455 1.3: the GUID appended to Sec-WebSocket-Key.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: What websockets accepts as a key (base64, validated, of exactly 16 bytes)
#: in the one form such a key can take: 22 base64 digits and "==".
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==\Z")
#: A list of RFC 9110 tokens, the Sec-WebSocket-Protocol form websockets'
#: parse_subprotocol accepts (without empty items or outer whitespace).
_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_TOKENS = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*\Z")
_COMMA = re.compile(r"[ \t]*,[ \t]*")
#: Connection header values (lower-cased) that carry the "upgrade" option
#: in the forms browsers and libraries send.
_CONNECTION_UPGRADE = frozenset({"upgrade", "keep-alive, upgrade", "upgrade, keep-alive"})


def fast_handshake(
    method: str, headers: dict[str, str], compression: bool, available: Sequence[str]
) -> tuple[str, str | None] | None:
    """The common opening handshake, checked without websockets' request objects.

    Returns ``(Sec-WebSocket-Accept, subprotocol or None)`` for a request
    that websockets' ``ServerProtocol.process_request`` (with hubbub's
    subprotocol choice) would accept with the same answer and no extension;
    None for anything else (an extension offered while compression is on, an
    unusual but valid header form, or an invalid request), which the caller
    hands to websockets to accept or refuse with its reason. So this path
    never accepts what websockets refuses, and never refuses anything.

    ``headers`` are the request's (names lower-cased, repeated headers
    joined with ", ", as websockets reads them); ``available`` are the
    server's subprotocols in preference order.
    """
    if method != "GET":
        return None
    if headers.get("connection", "").lower() not in _CONNECTION_UPGRADE:
        return None
    if headers.get("upgrade", "").lower() != "websocket":
        return None
    key = headers.get("sec-websocket-key")
    if key is None or _KEY.match(key) is None:
        return None
    if headers.get("sec-websocket-version") != "13":
        return None
    if compression and "sec-websocket-extensions" in headers:
        return None  # negotiation: websockets' permessage-deflate factory
    chosen = None
    offered = headers.get("sec-websocket-protocol")
    if offered is not None:
        if _TOKENS.match(offered) is None:
            return None
        names = _COMMA.split(offered)
        for name in available:
            if name in names:
                chosen = name
                break
    digest = hashlib.sha1((key + GUID).encode()).digest()
    return base64.b64encode(digest).decode(), chosen


_ID_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4 = (0x4000 << 64) | (0x8000 << 48)
_new_uuid = object.__new__
_set = object.__setattr__


class _Ids:
    """Stands in for the ``uuid`` module inside ``websockets.protocol``.

    websockets names every protocol object with ``uuid.uuid4()`` (for its
    logs), which reads 16 bytes from the kernel: a system call per
    handshake, the largest single cost of one in a py-spy profile. Ours are
    still version-4 UUIDs, unique in the process (a random base plus a
    counter), without the system call. Everything else is the real module.
    """

    def __init__(self) -> None:
        self._base = secrets.randbits(128)
        self._count = itertools.count()

    def uuid4(self) -> uuid.UUID:
        n = (self._base + next(self._count)) & _ID_MASK
        # uuid.UUID(int=n, version=4) without its Python-level checks: the
        # version and variant bits set here are the ones it would set.
        u = _new_uuid(uuid.UUID)
        _set(u, "int", n | _V4)
        _set(u, "is_safe", uuid.SafeUUID.unknown)
        return u

    def __getattr__(self, name: str) -> Any:
        return getattr(uuid, name)


if getattr(websockets.protocol, "uuid", None) is uuid:
    websockets.protocol.uuid = _Ids()  # type: ignore[assignment]


#: The permessage-deflate offer answered by every connection: a factory keeps
#: only these parameters (each connection gets its own extension object from
#: it), so one serves them all, as in websockets' own server.
_DEFLATE = [
    ServerPerMessageDeflateFactory(
        server_max_window_bits=12,
        client_max_window_bits=12,
        compress_settings={"memLevel": 5},
    )
]


def ws_protocol(settings: Settings, subprotocols: list[str]) -> HubbubServerProtocol:
    """The sans-I/O WebSocket core for one connection's handshake and frames."""
    return HubbubServerProtocol(
        extensions=_DEFLATE if settings.compression else None,
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
