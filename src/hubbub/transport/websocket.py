"""WebSocket connections: an asyncio protocol around the `websockets` sans-I/O core.

The `websockets` library's :class:`~websockets.server.ServerProtocol` does the
RFC 6455 work (frame parsing, masking, control frames, close codes, the
permessage-deflate extension of RFC 7692); hubbub's subclass
(:class:`~hubbub.transport.handshake.HubbubServerProtocol`) reads whole common
frames without websockets' byte parser and hands them to the same frame
logic. This module adds what a server
needs around it: message assembly with fail-fast UTF-8 checks, a bounded
outgoing buffer, closing-handshake timeouts and a cheap send path for frames
encoded once and written to many connections.

The transport is handed over from :mod:`hubbub.transport.http` once the
opening handshake is accepted (``transport.set_protocol``).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import struct
import time
from typing import TYPE_CHECKING, Any, Protocol

from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import State

from .. import metrics

if TYPE_CHECKING:
    from ..config import Settings
    from .handshake import HubbubServerProtocol

log = logging.getLogger("hubbub.websocket")

OP_TEXT = Opcode.TEXT
OP_BINARY = Opcode.BINARY
OP_CONT = Opcode.CONT
OP_CLOSE = Opcode.CLOSE
OP_PING = Opcode.PING
_PONG_BYTE = bytes([0x80 | Opcode.PONG.value])  # FIN + pong: a server pong's first byte
_utf8_decoder = codecs.getincrementaldecoder("utf-8")
#: Bytes handed to the frame parser at a time (see WebSocketConnection._feed).
FEED_SLICE = 16 * 1024
#: Why a connection stopped reading (WebSocketConnection.hold): its output
#: is over the high-water mark, or an async handler has a backlog.
HOLD_OUTPUT = 1
HOLD_PENDING = 2
#: Frame headers with a 16-bit and a 64-bit payload length (RFC 6455 5.2).
_HEAD16 = struct.Struct("!BBH").pack
_HEAD64 = struct.Struct("!BBQ").pack


def encode_frame(data: str | bytes, opcode: Opcode | None = None) -> bytes:
    """Serialize one unmasked, unfragmented server frame (RFC 6455 5.2).

    The result can be written as-is to every connection that did not
    negotiate an extension, which is what makes broadcast cheap. Data frames
    are framed here (a header of 2, 4 or 10 bytes, as websockets' own
    ``Frame.serialize`` builds it, without its frame object and checks);
    control frames go through websockets, which refuses a payload over 125
    bytes (RFC 6455 5.5).
    """
    if isinstance(data, str):
        payload = data.encode()
        op = opcode or OP_TEXT
    else:
        payload = data if type(data) is bytes else bytes(data)
        op = opcode or OP_BINARY
    if op is not OP_TEXT and op is not OP_BINARY:
        return Frame(op, payload).serialize(mask=False)
    n = len(payload)
    first = 0x81 if op is OP_TEXT else 0x82  # FIN + opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _HEAD16(first, 126, n) + payload
    return _HEAD64(first, 127, n) + payload


def _socket_fd(transport: asyncio.BaseTransport) -> int:
    """The fd of a plain TCP transport's socket; -1 for TLS or no socket."""
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


class WebSocketEndpoint(Protocol):
    """What a connection reports to: the server core (implemented by
    :class:`hubbub.endpoint.ServerEndpoint`).

    Every method is called from the event loop, synchronously, inside a
    callback of the connection (or inside ``conn.write``); none may block.
    States and the order of calls for one connection::

        ws_message* -> ws_closing -> ws_message* -> ws_closed

    (``mark_dirty`` at any time before ``ws_closed``). Each is called with
    the connection it concerns.
    """

    #: The limits; ``max_send_buffer`` is read when a connection is made,
    #: ``close_timeout`` when a closing handshake starts.
    settings: Settings

    def ws_message(self, conn: WebSocketConnection, data: str | bytes) -> None:
        """A complete message arrived: ``str`` for text (valid UTF-8), ``bytes`` for binary.

        Caller: once per message, in the order the messages arrived, never
        larger than ``settings.max_message_size``; possibly after
        :meth:`ws_closing` (messages the peer sent before it saw our Close),
        never after :meth:`ws_closed`.
        Implementation: may send, close (``conn.send``, ``conn.close``) or
        push to other connections from here: those only queue bytes. To keep
        a connection's messages in order behind a slow handler, it may stop
        reading with ``conn.transport.pause_reading()`` (not once
        ``conn.closed``).
        """
        ...

    def ws_closing(self, conn: WebSocketConnection) -> None:
        """``conn`` left the open state; ``conn.open`` is False from now on.

        Caller: exactly once per connection, when a Close frame is sent or
        received, the connection fails or is dropped (slow reader, ping
        timeout, abort), or its TCP connection is lost, whichever comes
        first. This may happen inside ``transport.write`` during the end of
        tick flush (``pause_writing`` of a slow reader).
        Implementation: remove ``conn`` from whatever it is pushed to by
        broadcast (``conn.send`` would return False now); do not write or
        flush from here.
        """
        ...

    def ws_closed(self, conn: WebSocketConnection) -> None:
        """The TCP connection of ``conn`` is gone (``conn.closed`` is True).

        Caller: exactly once per connection, after :meth:`ws_closing`, from
        ``connection_lost``; nothing is called for ``conn`` afterwards.
        Implementation: forget ``conn`` (its fd no longer exists) and fire the
        ``close`` event; it must not write to ``conn``.
        """
        ...

    def mark_dirty(self, conn: WebSocketConnection) -> None:
        """``conn`` has bytes queued (``conn.out``) for the end of this loop tick.

        Caller: ``conn.write``, when ``conn.out`` goes from empty to not
        empty: so once per connection until its bytes are flushed (again in
        the same tick only if they were flushed early: the end of the stream). This is the
        hot path of a broadcast (one call per recipient).
        Implementation: O(1), no allocation beyond remembering ``conn``;
        call ``conn.flush_out()`` once for it later in the same loop
        iteration (``loop.call_soon``, after the I/O callbacks that queued
        the bytes), so that one tick's frames leave in one transport write,
        in the order they were written. ``flush_out`` is a no-op on a closed
        connection or an empty buffer, so a connection remembered twice or
        closed meanwhile needs no check.
        """
        ...


class WebSocketConnection(asyncio.Protocol):
    """One established WebSocket connection.

    States: ``open`` (in the broadcast set) -> ``closing`` (a Close frame was
    sent or received, or the client is being dropped; nothing more is sent)
    -> ``closed`` (the TCP connection is gone; the ``close`` event fires once).
    """

    __slots__ = (
        "_abort_handle",
        "_decoder",
        "_parts",
        "_text",
        "backlog",
        "closed",
        "compressed",
        "connected_at",
        "endpoint",
        "failed",
        "fd",
        "high",
        "holds",
        "last_rx",
        "loop",
        "open",
        "out",
        "pending",
        "ping_sent",
        "proto",
        "reading_paused",
        "request",
        "running",
        "sockfd",
        "transport",
        "tx_empty",
    )

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        fd: int,
        proto: HubbubServerProtocol,
        transport: asyncio.Transport,
        request: Any,
    ) -> None:
        self.endpoint = endpoint
        self.fd = fd
        self.proto = proto
        self.request = request
        self.transport = transport
        # Bytes written during this event-loop tick, sent in one transport
        # write when the tick ends (see write()).
        #: This tick's outgoing bytes: None, one bytes object, or a list of them.
        self.out: bytes | list[bytes] | None = None
        self.loop = asyncio.get_running_loop()
        self.compressed = bool(proto.extensions)
        #: The OS socket the compiled fan-out may send(2) to directly while
        #: nothing of this connection is queued (hubbub.transport.fanout); -1
        #: when every byte must go through the transport (TLS, compression).
        self.sockfd = -1 if self.compressed else _socket_fd(transport)
        #: True only while the transport's write buffer is known to be empty:
        #: the compiled fan-out then sends without asking the transport. False
        #: before every byte handed to the transport (flush_out, the only
        #: transport.write of this class; tests/transport/test_tx_empty.py);
        #: set True by _speedups.c when get_write_buffer_size() is 0. False
        #: here: the HTTP layer may have written to this transport before.
        self.tx_empty = False
        #: Wall-clock time of the upgrade (Server.connection_info).
        self.connected_at = time.time()
        self.open = True
        self.failed = False
        self.closed = False
        self.last_rx = self.loop.time()
        self.ping_sent = False
        self._abort_handle: asyncio.TimerHandle | None = None
        # Message being assembled from fragments (RFC 6455 5.4).
        self._parts: list[bytes] | None = None
        self._decoder: Any = None
        self._text = False
        # Messages queued for an async handler (see ServerEndpoint._dispatch).
        self.pending: Any = None
        self.running = False
        # Backpressure, two levels. Past half of max_send_buffer the
        # transport calls pause_writing(): this connection stops reading (what
        # it sends us makes answers it does not read) until its buffer drains
        # to an eighth. Past max_send_buffer (frames pushed by others keep
        # coming) it is dropped: see flush_out. Neither costs anything on the
        # hot path.
        self.high = max(1, endpoint.settings.max_send_buffer // 2)
        transport.set_write_buffer_limits(high=self.high, low=self.high // 4)
        #: Why reading is paused (HOLD_* bits); 0 while reading.
        self.holds = 0
        self.reading_paused = False
        #: Bytes read but not parsed yet (while held).
        self.backlog = b""

    # -- asyncio.Protocol ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.holds or self.backlog:
            # Reading is paused; bytes of a read already under way wait here.
            self.backlog += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Handle ``data`` in slices of FEED_SLICE bytes, and stop (keeping the
        rest in ``backlog``) once the answers to it pass the high-water mark:
        one read (up to 256 KiB of tiny frames) may not turn into megabytes
        of answers for a client that does not read them."""
        pos, size = 0, len(data)
        while True:
            chunk = data[pos : pos + FEED_SLICE] if size > FEED_SLICE else data
            pos += len(chunk)
            self._receive(chunk)
            if pos >= size or self.closed or self.failed:
                return
            if not self.holds and self._queued() + self.transport.get_write_buffer_size() >= (
                self.high
            ):
                # Hand the answers over now: the transport says (with
                # pause_writing, which holds) whether the client keeps up.
                self.flush_out()
            if self.holds:
                self.backlog = data[pos:]
                return

    def _queued(self) -> int:
        out = self.out
        if out is None:
            return 0
        return len(out) if type(out) is bytes else sum(map(len, out))  # type: ignore[arg-type]

    def hold(self, reason: int) -> None:
        """Stop reading from this connection (until :meth:`release` of every reason)."""
        self.holds |= reason
        if not self.reading_paused and not self.closed and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def release(self, reason: int) -> None:
        """Drop one reason to hold; with none left, handle what was kept and read again."""
        self.holds &= ~reason
        if self.holds or self.closed:
            return
        if self.backlog:
            data, self.backlog = self.backlog, b""
            self._feed(data)
            if self.holds or self.closed:
                return
        if self.reading_paused:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def _receive(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        self.ping_sent = False
        proto = self.proto
        proto.receive_frames(data)
        events = proto.events_received()
        # What the core wants to send in answer to this data, in order: a
        # pong per ping, then possibly the echo of a Close frame and the end
        # of the stream. A handler's replies to the messages that came before
        # that Close must go out before the echo (RFC 6455 5.5.1: nothing is
        # sent after a Close), and a pong before any reply to a message that
        # followed its ping (Autobahn 5.6), so the answers are written as the
        # frames are handled, in order.
        replies = proto.data_to_send()
        for frame in events:
            if frame.opcode is OP_PING:
                if replies and replies[0][:1] == _PONG_BYTE:
                    self.write(replies.pop(0))
                continue
            if frame.opcode is OP_CLOSE:
                self._on_frame(frame)
                break
            if self.failed:
                break
            self._on_frame(frame)
        for chunk in replies:
            self._write_chunk(chunk)
        self._flush()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._flush()
        return None

    def pause_writing(self) -> None:
        # Over the high-water mark (half of max_send_buffer): stop reading
        # what this client sends until it has read what we sent.
        self.hold(HOLD_OUTPUT)

    def resume_writing(self) -> None:
        self.release(HOLD_OUTPUT)

    def _overflow(self) -> None:
        # The outgoing buffer passed max_send_buffer: this client reads slower
        # than it is written to. This fires inside flush_out (the end-of-tick
        # write): leave the broadcast set at once, and close from a fresh
        # callback rather than from inside the transport's write.
        if self.open:
            metrics.slow_consumers.inc("send_buffer")
            size = self.transport.get_write_buffer_size()
            log.warning(
                "client-%d dropped: %d bytes waiting in its send buffer (limit %d)",
                self.fd,
                size,
                self.endpoint.settings.max_send_buffer,
            )
            self._leave_open()
            self.loop.call_soon(self._fail, CloseCode.TRY_AGAIN_LATER, "send buffer overflow")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.backlog = b""
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        self._leave_open()
        self.endpoint.ws_closed(self)

    # -- receiving ------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is OP_TEXT:
            if frame.fin:
                try:
                    text = frame.data.decode()
                except UnicodeDecodeError as exc:
                    self._fail(CloseCode.INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
                    return
                self._deliver(text)
            else:
                self._text = True
                self._decoder = _utf8_decoder()
                self._parts = []
                self._fragment(frame.data, final=False)
        elif op is OP_BINARY:
            if frame.fin:
                self._deliver(frame.data)
            else:
                self._text = False
                self._parts = [frame.data]
        elif op is OP_CONT:
            if self._text:
                self._fragment(frame.data, final=frame.fin)
            else:
                assert self._parts is not None
                self._parts.append(frame.data)
                if frame.fin:
                    data = b"".join(self._parts)
                    self._parts = None
                    self._deliver(data)
        elif op is OP_CLOSE:
            # The sans-I/O core has queued the echo of the Close frame
            # (RFC 6455 5.5.1) and the end of the TCP stream.
            self._parts = None
            self._decoder = None
            self._leave_open()
        # PING is answered by the core; PONG only refreshes last_rx.

    def _deliver(self, message: str | bytes) -> None:
        self.endpoint.ws_message(self, message)

    def _fragment(self, data: bytes, *, final: bool) -> None:
        # Decode as fragments arrive so that invalid UTF-8 fails the
        # connection at once (RFC 6455 8.1), not when the message ends.
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            self._fail(CloseCode.INVALID_DATA, f"invalid UTF-8: {exc.reason}")
            return
        assert self._parts is not None
        self._parts.append(text)
        if final:
            message = "".join(self._parts)
            self._parts = None
            self._decoder = None
            self._deliver(message)

    # -- sending --------------------------------------------------------------

    def send(self, data: str | bytes, opcode: Opcode | None = None) -> bool:
        """Send one message; False if the connection is no longer open."""
        if not self.open:
            return False
        if self.compressed:
            # Compression keeps per-connection state: encode for this peer.
            # (Not proto.send_text(): that refuses once the core has parsed a
            # Close that this layer has not handled yet; see data_received.)
            binary = opcode is OP_BINARY or (opcode is None and not isinstance(data, str))
            payload = data.encode() if isinstance(data, str) else bytes(data)
            frame = Frame(OP_BINARY if binary else OP_TEXT, payload)
            self.write(frame.serialize(mask=False, extensions=self.proto.extensions))
        else:
            self.write(encode_frame(data, opcode))
        return True

    def write(self, data: bytes) -> None:
        """Queue bytes for this connection; they go out when the loop tick ends.

        Coalescing: every frame for this connection produced in one tick (a
        burst of room messages, a reply after a pong) leaves in a single
        transport write, so a busy room costs one system call per client per
        tick rather than one per message. Order is kept because every byte
        for this connection goes through here. The send buffer limit is
        checked by the transport when the tick's bytes are handed over, so
        a slow client can exceed max_send_buffer by at most one tick's worth.
        """
        out = self.out
        if out is None:
            # The common case (one frame per tick) allocates no list: bytes
            # are not tracked by the cyclic GC, so a broadcast to thousands
            # of clients adds nothing to its next collection.
            self.out = data
            self.endpoint.mark_dirty(self)
        elif type(out) is list:
            out.append(data)
        else:
            self.out = [out, data]  # type: ignore[list-item]

    def flush_out(self) -> None:
        """Hand this tick's bytes to the transport (the endpoint calls it when the tick ends)."""
        out = self.out
        if out is not None:
            self.out = None
            if not self.closed and not self.transport.is_closing():
                self.tx_empty = False  # before the write: see __init__
                self.transport.write(b"".join(out) if type(out) is list else out)
                # HOLD_OUTPUT is set (by pause_writing) whenever the buffer
                # is over half the limit: the common case checks one int.
                if self.holds & HOLD_OUTPUT and (
                    self.transport.get_write_buffer_size() > self.endpoint.settings.max_send_buffer
                ):
                    self._overflow()

    def send_frame_bytes(
        self, frame: bytes, data: str | bytes, opcode: Opcode | None = None
    ) -> None:
        """Write ``frame``: ``data`` encoded once by the caller for many connections
        (``data`` itself is used where compression needs a per-connection encoding)."""
        if self.compressed:
            self.send(data, opcode)
        else:
            self.write(frame)

    def ping(self) -> None:
        if self.open:
            self.ping_sent = True
            self.proto.send_ping(b"hubbub")
            self._flush()

    def close(self, code: int = 1000, reason: str = "") -> bool:
        """Start the closing handshake (RFC 6455 7.1.2)."""
        if not self.open:
            return False
        self._leave_open()
        if self.proto.state is not State.OPEN:
            # The peer's Close is already parsed; its echo ends the handshake.
            return True
        try:
            self.proto.send_close(code, reason)
        except Exception as exc:  # a close code or reason RFC 6455 7.4 forbids
            log.warning(
                "client-%d: close(%r, %r) refused: %s; closing with 1000",
                self.fd,
                code,
                reason,
                exc,
            )
            self.proto.send_close(1000, "")
        self._flush()
        self._arm_abort()
        return True

    def abort(self) -> None:
        self._leave_open()
        self.out = None
        self.transport.abort()

    # -- internals ------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7) with a close frame."""
        if self.closed or self.proto.state is State.CLOSED:
            return
        self.failed = True
        self._leave_open()
        if self.proto.state is State.OPEN:
            self.proto.fail(code, reason)
            self._flush()
        self._arm_abort()

    def _leave_open(self) -> None:
        if self.open:
            self.open = False
            self.endpoint.ws_closing(self)

    def _flush(self) -> None:
        for chunk in self.proto.data_to_send():
            self._write_chunk(chunk)

    def _write_chunk(self, chunk: bytes) -> None:
        if chunk:
            self.write(chunk)
        else:
            # End of stream: the server closes TCP once the closing
            # handshake is done (RFC 6455 7.1.1). close() flushes the
            # buffer first; _arm_abort bounds how long that may take. With
            # nothing left to flush on a plain socket it closes at once: no
            # timer (TLS still has its own closing exchange to bound).
            self._leave_open()
            self.flush_out()
            waiting = self.sockfd < 0 or self.transport.get_write_buffer_size()
            self.transport.close()
            if waiting:
                self._arm_abort()

    def _arm_abort(self) -> None:
        if self._abort_handle is None and not self.closed:
            self._abort_handle = self.loop.call_later(
                self.endpoint.settings.close_timeout, self.transport.abort
            )

    @property
    def close_code(self) -> int | None:
        rcvd: Close | None = self.proto.close_rcvd
        return rcvd.code if rcvd is not None else None
