"""The WebSocket opening handshake's pieces (RFC 6455 4.2.2): the sans-I/O
core that checks it (:class:`HubbubServerProtocol`, which then reads the
connection's frames), and the 101 answer.

:class:`~hubbub.transport.http.HttpConnection` decides when to upgrade;
this module builds what the upgrade needs. Three ways through, cheapest first:

* :data:`compiled_upgrade` (the C extension ``_handshake``, see its source):
  the first read of a connection, when it is one complete request head in
  the strict common form, is parsed, checked and answered in one call;
* :func:`fast_handshake`: the common request, parsed by httptools, checked
  without websockets' request objects;
* websockets' ``ServerProtocol.process_request`` for everything else, which
  accepts or refuses with its reason.

The first two only ever accept what the last one accepts, with the same
answer (tests/transport/test_handshake_fast.py and test_handshake_compiled.py
compare them on generated requests); they never refuse anything. Checks of
RFC 6455 4.1 that websockets leaves to the HTTP layer (HTTP/1.1 or higher, a
``Host`` header) are :func:`http_refusal`'s, made before any of them.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import websockets.protocol
from websockets.datastructures import Headers
from websockets.exceptions import ProtocolError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode, apply_mask
from websockets.http11 import Request as WSRequest
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Subprotocol

from .messages import Request, http_date

if TYPE_CHECKING:
    from ..config import Settings

#: A refused handshake's answer: status, reason phrase, headers, body.
Refusal = tuple[int, str, list[tuple[str, str]], bytes]

log = logging.getLogger("hubbub.http")

#: ``upgrade(data, subprotocols, compression, max_head, max_headers, date)`` ->
#: None or ``(path, query, headers, subprotocol, head, consumed)``: see
#: ``_handshake.c``. None when the extension did not build or
#: ``HUBBUB_NO_SPEEDUPS=1`` is set (then httptools and fast_handshake do it).
CompiledUpgrade = Callable[
    [bytes, Sequence[str], bool, int, int, str],
    tuple[str, str, dict[str, str], str | None, bytes, int] | None,
]
compiled_upgrade: CompiledUpgrade | None
try:
    from ._handshake import upgrade as compiled_upgrade
except ImportError:  # no compiler when installed: the Python path does it all
    compiled_upgrade = None
if os.environ.get("HUBBUB_NO_SPEEDUPS", "") not in ("", "0"):
    compiled_upgrade = None


#: Header lines a request may have (more: 431).
MAX_HEADERS = 100


def compiled_request(
    data: bytes, settings: Settings, subprotocols: Sequence[str], conn: Any
) -> tuple[Request, bytes, str | None, bytes] | None:
    """The first read of ``conn`` (an HttpConnection) as the common WebSocket handshake,
    through :data:`compiled_upgrade`: the request, the 101 answer, the subprotocol and
    the bytes after the head; None for anything else (or without the extension)."""
    if compiled_upgrade is None:
        return None
    found = compiled_upgrade(
        data,
        subprotocols,
        settings.compression,
        settings.max_header_size,
        MAX_HEADERS,
        http_date(),
    )
    if found is None:
        return None
    path, query, headers, subprotocol, head, consumed = found
    request = Request("GET", path, query, headers, b"", conn.peer, conn.tls)
    return request, head, subprotocol, data[consumed:]


def http_refusal(http11: bool, headers: dict[str, str]) -> str | None:
    """What RFC 6455 4.1 asks of the HTTP request that websockets does not check
    (a reason for a 400), or None: an HTTP/1.1 (or higher) request with a Host."""
    if not http11:
        return "Bad Request: a WebSocket handshake needs HTTP/1.1 or higher (RFC 6455 4.1)\n"
    if "host" not in headers:
        return "Bad Request: a WebSocket handshake needs a Host header (RFC 6455 4.1)\n"
    return None


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


def negotiate(
    request: Request,
    http11: bool,
    proto: HubbubServerProtocol,
    compression: bool,
    available: Sequence[str],
) -> bytes | Refusal:
    """Check a handshake request parsed by httptools (:func:`http_refusal`, then
    :func:`fast_handshake`, else websockets) and negotiate extensions and
    subprotocol (set on ``proto``): the 101 answer, or the refusal (status and a
    one- or two-line reason in the body: websockets' own when it refused)."""
    bad = http_refusal(http11, request.headers)
    if bad is not None:
        return 400, "Bad Request", [("Content-Type", "text/plain; charset=utf-8")], bad.encode()
    fast = fast_handshake(request.method, request.headers, compression, available)
    if fast is not None:
        accept, protocol_header = fast
        proto.origin = request.headers.get("origin")  # type: ignore[assignment]
        proto.subprotocol = protocol_header  # type: ignore[assignment]
        return switching_protocols(accept, None, protocol_header)
    # Repeated headers were joined with ", " (RFC 9110 5.3), which is how
    # websockets reads them too.
    wsrequest = WSRequest(
        request.path + (f"?{request.query_string}" if request.query_string else ""),
        Headers(request.headers.items()),
        method=request.method,
    )
    try:
        accept, extensions_header, protocol_header = proto.process_request(wsrequest)
    except Exception:
        # Refused: websockets' accept() checks again and builds the answer.
        response = proto.accept(wsrequest)
        # RFC 6455 4.2.2: say which protocol version this server speaks.
        response.headers["Sec-WebSocket-Version"] = "13"
        return (
            response.status_code,
            response.reason_phrase,
            list(response.headers.raw_items()),
            response.body or b"",
        )
    return switching_protocols(accept, extensions_header, protocol_header)


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
_new_id = websockets.protocol.uuid.uuid4


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


#: A frame's first byte with FIN set and no RSV bit -> its opcode, for the
#: opcodes a whole frame may have (not CONT, nothing reserved).
_WHOLE = {
    0x80 | op.value: op
    for op in (Opcode.TEXT, Opcode.BINARY, Opcode.CLOSE, Opcode.PING, Opcode.PONG)
}
_DATA = (0x81, 0x82)  # FIN + TEXT, FIN + BINARY: may have a 16-bit length
_OPEN = State.OPEN
_CLOSING = State.CLOSING
_CLOSE = Opcode.CLOSE


class HubbubServerProtocol(ServerProtocol):
    """`websockets`' server protocol with one RFC reading changed and a direct
    path for whole frames.

    Subprotocols: see select_subprotocol.

    RFC 6455 5.4 lets control frames arrive between the fragments of a
    message. `websockets` fails the connection with 1002 when that control
    frame is a Close (Autobahn case 7.1.5); we treat it as a normal closing
    handshake and drop the unfinished message.

    :meth:`receive_frames` is ``receive_data`` for the common case: complete,
    unfragmented, masked frames, each read as one ``Frame`` and handed to
    ``recv_frame`` (websockets' own frame logic: close codes, echo, pongs,
    state), without websockets' generator-based byte parser; the parser
    itself is only started when it is needed (see parse).
    """

    #: Still at a frame boundary with every byte so far read by
    #: receive_frames (so websockets' parser has seen nothing).
    direct = True

    @property  # type: ignore[override]
    def id(self) -> uuid.UUID:
        """websockets' name of the connection (for its logs), made when first read:
        nothing reads it while its debug logs are off, and a UUID costs as much as
        the rest of the copy in ws_protocol."""
        attrs = self.__dict__
        made: uuid.UUID | None = attrs.get("_id")
        if made is None:
            made = attrs["_id"] = _new_id()
        return made

    @id.setter
    def id(self, value: uuid.UUID) -> None:
        self.__dict__["_id"] = value

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        # RFC 6455 4.2.2: the server picks one of the client's subprotocols
        # or none. A client that offers none (or none we know) is a plain
        # client: accepted without a subprotocol, not refused.
        for subprotocol in self.available_subprotocols or ():
            if subprotocol in subprotocols:
                return subprotocol
        return None

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is _CLOSE and self.current_size is not None:
            self.current_size = None
        super().recv_frame(frame)

    def parse(self) -> Any:
        # websockets starts its parser in __init__ (a chain of generators that
        # waits for the first byte, and a reference cycle); here it is started
        # by the first receive_data or receive_eof, see _Idle.
        return _IDLE

    def _start_parser(self) -> None:
        if self.parser is _IDLE:
            self.parser = ServerProtocol.parse(self)
        elif self.parser is _DISCARD:
            # As recv_frame would have left it (its first step finds the reader empty).
            self.parser = self.discard()
            next(self.parser)

    def receive_data(self, data: bytes | bytearray) -> None:
        self._start_parser()
        super().receive_data(data)

    def receive_eof(self) -> None:
        self._start_parser()
        super().receive_eof()

    def receive_frames(self, data: bytes) -> None:
        """``receive_data(data)``, the whole frames at its start read directly.

        A frame is read directly only if websockets' parser would read it the
        same way and then call ``recv_frame`` with it, without raising: the
        connection is open, without extension (permessage-deflate decodes in
        the parser) and with no fragmented message in progress, and the
        frame is complete, final, masked, without RSV bits, of a known opcode
        other than CONT, within ``max_size`` (a control frame within 125
        bytes), a Close with a valid code and UTF-8 reason. The first byte
        that does not start such a frame, and every byte after it, goes to
        websockets' parser (for good: it then holds the stream position).
        """
        if self.direct and not self.extensions:
            taken = self._whole_frames(data)
            if taken == len(data):
                return
            self.direct = False
            data = data[taken:]
        self.receive_data(data)

    def _whole_frames(self, data: bytes) -> int:
        """Handle the whole frames at the start of ``data``; the bytes they took."""
        limit = self.max_message_size
        if self.max_fragment_size is not None:
            limit = self.max_fragment_size if limit is None else min(limit, self.max_fragment_size)
        pos, size = 0, len(data)
        while pos + 6 <= size and self.state is _OPEN and self.current_size is None:
            head = data[pos]
            op = _WHOLE.get(head)
            length = data[pos + 1] ^ 0x80  # the MASK bit must be set
            if op is None or length > 0x7F:
                break
            start = pos + 6
            if length == 126 and head in _DATA:
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
            elif length > 125:
                break
            end = start + length
            if end > size or (limit is not None and length > limit):
                break
            payload = apply_mask(data[start:end], data[start - 4 : start])
            if op is _CLOSE:
                try:
                    close = Close.parse(payload)
                except (ProtocolError, UnicodeDecodeError):
                    break  # websockets fails the connection, with its code
                self._closed_by_peer(close, payload)
                return end
            self.recv_frame(Frame(op, payload))
            pos = end
        return pos

    def _closed_by_peer(self, close: Close, payload: bytes) -> None:
        """What ``recv_frame`` does with a valid Close while OPEN, with no extension
        and no fragmented message (RFC 6455 5.5.1, 7.1.2), without websockets'
        frame serializer and discard parser: echo the payload as it came (an
        unmasked frame of 125 bytes at most: a 2-byte header), end the stream,
        and discard what follows (the discard parser is made if anything does
        follow: see _Idle)."""
        self.close_rcvd = self.close_sent = close
        self.close_rcvd_then_sent = True
        self.state = _CLOSING
        self.eof_sent = True
        self.writes += (bytes((0x88, len(payload))) + payload, b"")  # SEND_EOF
        self.parser = _DISCARD
        self.events.append(Frame(_CLOSE, payload))


class _Idle:
    """The parser of every protocol that has not needed one yet.

    ``Protocol.__init__`` steps its new parser once (``next``): a parser's
    first step only waits for data. A protocol's real parser is made when data
    or the end of the stream first reach it (receive_data, receive_eof); its
    first step then finds them already fed, as the parser made in
    ``__init__`` would have on its second. :data:`_DISCARD` stands in the same
    way for the discard parser of a connection closed by a whole Close frame
    (``_closed_by_peer``): most connections get nothing after it.
    """

    __slots__ = ()

    def __iter__(self) -> _Idle:
        return self

    def __next__(self) -> None:
        return None


_IDLE = _Idle()
_DISCARD = _Idle()


#: A new protocol's attributes, per (compression, subprotocols, max size): see ws_protocol.
_templates: dict[tuple[bool, tuple[str, ...], int | None], dict[str, Any]] = {}
_new_protocol = object.__new__


def ws_protocol(settings: Settings, subprotocols: list[str]) -> HubbubServerProtocol:
    """The sans-I/O WebSocket core for one connection's handshake and frames.

    A copy of the attributes ``__init__`` gives one made with the same
    arguments (:func:`_make_protocol`, once per set of them) with new mutable
    parts and no id yet (made when read, see ``HubbubServerProtocol.id``): a
    fifth of the cost of running ``__init__`` (a UUID, a logger level check, a
    property per state, keyword parsing) per connection.
    tests/transport/test_ws_protocol.py checks the copy against ``__init__``.
    """
    key = (settings.compression, tuple(subprotocols), settings.max_message_size)
    template = _templates.get(key)
    if template is None:
        if len(_templates) >= 16:
            _templates.clear()  # settings do not change in a running server
        template = _make_protocol(settings, subprotocols).__dict__
        del template["_id"]  # see HubbubServerProtocol.id
        _templates[key] = template
    proto: HubbubServerProtocol = _new_protocol(HubbubServerProtocol)
    proto.__dict__ = attrs = template.copy()
    attrs["reader"] = StreamReader()
    attrs["extensions"] = []
    attrs["events"] = []
    attrs["writes"] = []
    return proto


def _make_protocol(settings: Settings, subprotocols: list[str]) -> HubbubServerProtocol:
    """A protocol made by its ``__init__`` (the template of :func:`ws_protocol`)."""
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
