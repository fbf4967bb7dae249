"""Sessions: hubbub connections carried by HTTP requests (SSE, long polling).

The wire contract is docs/transports.md. A :class:`Session` is registered in
the server's connection tables with its own ``fd``, like a
:class:`~hubbub.transport.websocket.WebSocketConnection`, and offers the
same methods the server uses on one (``send``, ``send_frame_bytes``,
``close``, ``abort``, ``hold``/``release``, what ``buffered`` and
``connection_info`` read), so ``push``, ``push_many``, ``broadcast``,
``disconnect`` and the app's events work unchanged. Only the carriage
differs: frames pushed to a session wait, numbered from 1, in its
:class:`FrameBuffer` until a *carrier* takes them: an event stream
(:mod:`hubbub.transport.sse`) writes them as they come; a long poll
(:mod:`hubbub.transport.session_routes`) answers with them.

Bounds (each as for a WebSocket, see Settings):

* the frames not yet acknowledged (poll ``after``, SSE ``Last-Event-ID``) are
  bounded by ``max_send_buffer`` bytes. Past it, a poll session is dropped
  like a slow WebSocket reader (close code 1013). An SSE session keeps the
  frames already written to its stream only as a replay window (the oldest
  are forgotten first); it is dropped when the frames not written yet plus
  the stream's unsent bytes pass ``max_send_buffer``. So one session pins at
  most about 2 x ``max_send_buffer`` (frames + the stream's socket buffer).
* a session with no stream and no poll for ``ping_interval + ping_timeout``
  seconds (:func:`idle_limit`) is closed: the app sees ``close``.
* a session closed by the server keeps its last frames and the close
  (code, reason) for its client for ``close_timeout`` seconds at most.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .. import metrics

if TYPE_CHECKING:
    from .contract import SessionEndpoint
    from .messages import Request

log = logging.getLogger("hubbub.session")

#: The two carriages (the ``transport`` query parameter of POST /v1/sessions).
KINDS = ("sse", "poll")
#: Close code of a session dropped because its client does not keep up
#: (RFC 6455 1013, as for a WebSocket).
TRY_AGAIN_LATER = 1013
#: Close code when the session's client went away (no poll, no stream).
GOING_AWAY = 1001
#: The subprotocol whose frames are JSON texts (hubbub.protocol.SUBPROTOCOL).
JSON_PROTOCOL = "hubbub.v1"


# The last text encoded by Session.send and its bytes: a broadcast gives every
# session the same str, which is then encoded once, not once per session. (The
# reference kept here is what makes the identity check safe.)
_encoded: list[Any] = [None, b""]


def _utf8(data: str | bytes) -> bytes:
    if data is _encoded[0]:
        return _encoded[1]  # type: ignore[no-any-return]
    raw = data.encode() if isinstance(data, str) else bytes(data)
    _encoded[0], _encoded[1] = data, raw
    return raw


def idle_limit(ping_interval: float, ping_timeout: float, poll_timeout: float) -> float:
    """Seconds a session may have no stream and no poll before it is closed.

    ``ping_interval + ping_timeout``, as for a silent WebSocket; with the
    heartbeat off (``ping_interval`` 0), ``2 * poll_timeout + 10`` so that a
    session nobody polls still ends."""
    if ping_interval > 0:
        return ping_interval + ping_timeout
    return 2 * poll_timeout + 10


class FrameBuffer:
    """A session's outgoing frames, numbered from 1 (pure state, no I/O).

    ``frames[0]`` is frame number ``first``; ``last`` is the newest number
    given; ``sent`` the newest handed to an event stream. Acknowledged frames
    (``ack``) are forgotten; ``trim`` forgets sent ones, oldest first, to fit
    ``limit`` bytes (an event stream's replay window).
    """

    __slots__ = ("first", "frames", "last", "limit", "sent", "size", "unsent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: deque[bytes] = deque()
        self.first = 1
        self.last = 0
        self.sent = 0
        #: Bytes of the frames kept; of those not handed to a stream yet.
        self.size = 0
        self.unsent = 0

    @property
    def acked(self) -> int:
        """The newest number forgotten (acknowledged or trimmed); 0 at first."""
        return self.first - 1

    def push(self, data: bytes) -> int:
        """Keep ``data`` as the next frame; returns its number."""
        self.frames.append(data)
        self.last += 1
        self.size += len(data)
        self.unsent += len(data)
        return self.last

    def valid(self, after: int) -> bool:
        """True if the frames after ``after`` can all be given (none forgotten, none
        in the future)."""
        return self.acked <= after <= self.last

    def ack(self, after: int) -> None:
        """Forget the frames numbered up to ``after`` (they were received)."""
        after = min(after, self.last)
        while self.first <= after:
            data = self.frames.popleft()
            self.size -= len(data)
            if self.first > self.sent:
                self.unsent -= len(data)
            self.first += 1
        self.sent = max(self.sent, after)

    def since(self, after: int) -> list[tuple[int, bytes]]:
        """The frames numbered after ``after`` (call :meth:`valid` first).

        Costs what it returns, not what is kept (a stream takes the newest few
        of a long replay window each tick)."""
        count = min(self.last - max(after, self.acked), len(self.frames))
        if count <= 0:
            return []
        newest = list(itertools.islice(reversed(self.frames), count))
        newest.reverse()
        start = self.last - count + 1
        return [(start + i, d) for i, d in enumerate(newest)]

    def take_unsent(self) -> list[tuple[int, bytes]]:
        """The frames not handed to a stream yet; they count as sent from now on."""
        out = self.since(max(self.sent, self.acked))
        self.sent = self.last
        self.unsent = 0
        return out

    def rewind(self, after: int) -> None:
        """A new stream resumes after ``after``: the frames after it count as unsent."""
        self.ack(after)
        self.sent = max(after, self.acked)
        self.unsent = sum(len(d) for _, d in self.since(self.sent))

    def trim(self) -> int:
        """Forget sent frames, oldest first, while over ``limit``; how many went."""
        n = 0
        while self.size > self.limit and self.first <= self.sent and self.frames:
            self.size -= len(self.frames.popleft())
            self.first += 1
            n += 1
        return n

    def clear(self) -> None:
        """Forget every frame (the session is dropped); numbers go on from ``last``."""
        self.frames.clear()
        self.first = self.last + 1
        self.sent = self.last
        self.size = self.unsent = 0


class Carrier(Protocol):
    """An event stream attached to a session (:class:`hubbub.transport.sse.EventStream`)."""

    def write_frames(self, frames: list[tuple[int, bytes]]) -> None: ...

    def finish(self, event: str | None, data: dict[str, Any] | None) -> None:
        """Write a last event (if any), end the stream and its HTTP connection."""
        ...

    def buffered(self) -> int:
        """Bytes written to the stream that the client has not taken yet."""
        ...


class _Proto:
    """What ``Server.connection_info`` reads of a connection's protocol."""

    __slots__ = ("subprotocol",)

    def __init__(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol


class Session:
    """One hubbub connection over SSE or long polling (see the module doc).

    States: ``open`` (in the broadcast set) -> closing (``close_info`` set:
    what is left is delivered, then the close) -> ``closed`` (forgotten; its
    id answers 404, the ``close`` event has fired).
    """

    #: Never permessage-deflate (connection_info; broadcast sends each its text).
    compressed = False
    #: Nothing is queued outside the buffer (Server.buffered reads ``out``).
    out = None
    #: No socket to write frames to (the compiled fan-out, hubbub.transport.fanout,
    #: then calls ``send_frame_bytes``).
    sockfd = -1

    def __init__(
        self, endpoint: SessionEndpoint, fd: int, sid: str, kind: str, request: Request
    ) -> None:
        self.endpoint = endpoint
        self.fd = fd
        #: The session id: 128 random bits, the session's credential (never logged).
        self.id = sid
        self.kind = kind
        self.request = request
        #: Wall-clock time the session was created (Server.connection_info).
        self.connected_at = time.time()
        self.proto = _Proto(request.subprotocol)
        #: hubbub.v1 frames are JSON: a poll answer embeds them as they are
        #: (others, e.g. the seed's lines, as JSON strings).
        self.json_frames = request.subprotocol == JSON_PROTOCOL
        s = endpoint.settings
        self.buffer = FrameBuffer(s.max_send_buffer)
        self.loop = asyncio.get_running_loop()
        self.open = True
        self.closed = False
        self.close_info: tuple[int, str] | None = None
        self.stream: Carrier | None = None
        #: The waiting long poll's future (resolved when there is something to answer).
        self.poll: asyncio.Future[bool] | None = None
        # Waiting for the end-of-tick flush (ServerEndpoint.mark_dirty / flush_out).
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        # The endpoint's handler queue (ServerEndpoint._dispatch).
        self.running = False
        self.pending: Any = None
        self.holds = 0
        self._released: asyncio.Event | None = None
        self._arm(idle_limit(s.ping_interval, s.ping_timeout, s.poll_timeout), self._expire)

    def __repr__(self) -> str:
        return f"<Session fd={self.fd} {self.kind}{' open' if self.open else ''}>"

    # -- what the server reads ---------------------------------------------

    @property
    def transport(self) -> Session:
        """``Server.buffered`` asks ``conn.transport.get_write_buffer_size()``."""
        return self

    def get_write_buffer_size(self) -> int:
        """Bytes pushed and not yet taken: what producers pace themselves by."""
        if self.kind == "poll":
            return self.buffer.size
        return self.buffer.unsent + (self.stream.buffered() if self.stream else 0)

    # -- sending (Server.push / push_many / broadcast) ----------------------

    def send(self, data: str | bytes, opcode: Any = None) -> bool:
        """Queue one frame; False if the session is no longer open."""
        if not self.open:
            return False
        self.buffer.push(_utf8(data))
        if self.stream is not None:
            if not self._dirty:
                # One write per tick, for all sessions at once (as WebSockets).
                self._dirty = True
                self.endpoint.mark_dirty(self)
        elif self.poll is not None:
            if not self.poll.done():
                self.poll.set_result(True)
        elif self.kind == "sse":
            self.buffer.trim()  # the replay window of a stream that is away
        if self.get_write_buffer_size() > self.buffer.limit:
            self._overflow()
        return True

    def send_frame_bytes(self, frame: bytes, data: str | bytes, opcode: Any = None) -> None:
        self.send(data, opcode)

    def flush_out(self) -> None:
        """The end of the tick (ServerEndpoint.flush_writes): write what came in it."""
        self._dirty = False
        self.flush()

    def flush(self) -> None:
        """Write the frames not sent yet to the event stream."""
        stream = self.stream
        if stream is None or not self.buffer.unsent:
            return
        stream.write_frames(self.buffer.take_unsent())
        if stream.buffered() > self.buffer.limit:
            self._overflow()
        else:
            self.buffer.trim()

    def _overflow(self) -> None:
        if not self.open:
            return
        metrics.slow_consumers.inc("send_buffer")
        log.warning(
            "client-%d dropped: %d bytes waiting for its %s session (limit %d)",
            self.fd,
            self.get_write_buffer_size(),
            self.kind,
            self.buffer.limit,
        )
        self.buffer.clear()
        self.close(TRY_AGAIN_LATER, "send buffer overflow")

    # -- the handler queue (ServerEndpoint._dispatch) -----------------------

    def hold(self, reason: int) -> None:
        """Take no more client frames (a POST .../frames waits) until released."""
        self.holds |= reason
        if self._released is None:
            self._released = asyncio.Event()
        self._released.clear()

    def release(self, reason: int) -> None:
        self.holds &= ~reason
        if not self.holds and self._released is not None:
            self._released.set()

    async def wait_released(self) -> None:
        while self.holds and not self.closed and self._released is not None:
            await self._released.wait()

    # -- closing ------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> bool:
        """Close from the server side: the frames left, then the close, reach the client."""
        if not self.open:
            return False
        self.open = False
        self.close_info = (code, reason)
        self.endpoint.session_closing(self)
        if self.stream is not None:
            self.flush()
            self._finish_stream()
        elif self.poll is not None and not self.poll.done():
            self.poll.set_result(True)
        if not self.closed:
            # Nobody to tell now: wait a little for the client to come for it.
            self._arm(self.endpoint.settings.close_timeout, self.abort)
        return True

    def abort(self) -> None:
        """Gone at once (the client deleted it, it expired, or shutdown ran out of time)."""
        if self.closed:
            return
        if self.open:
            self.open = False
            self.close_info = self.close_info or (GOING_AWAY, "session ended")
            self.endpoint.session_closing(self)
        self.closed = True
        self._cancel()
        if self.stream is not None:
            self._finish_stream()
        if self.poll is not None and not self.poll.done():
            self.poll.set_result(True)
        self.buffer.clear()
        if self._released is not None:
            self._released.set()
        self.endpoint.session_closed(self)

    def delivered_close(self) -> None:
        """The close (code, reason) was handed to a carrier: the session is done."""
        self.abort()

    def _finish_stream(self) -> None:
        stream, self.stream = self.stream, None
        assert stream is not None
        code, reason = self.close_info or (GOING_AWAY, "session ended")
        stream.finish("close", {"code": code, "reason": reason})
        if not self.closed:
            self.delivered_close()

    def _expire(self) -> None:
        self._timer = None
        if self.stream is not None or self.poll is not None or self.closed:
            return
        if self.open:
            s = self.endpoint.settings
            limit = idle_limit(s.ping_interval, s.ping_timeout, s.poll_timeout)
            log.info("client-%d dropped: no poll or stream for %.1fs", self.fd, limit)
        self.abort()

    # -- carriers -------------------------------------------------------------

    def attach(self) -> None:
        """A stream or a poll is here: the session is not idle."""
        self._cancel()

    def detach(self) -> None:
        """No stream and no poll any more: the idle clock starts."""
        if self.closed or self.stream is not None or self.poll is not None:
            return
        if self.open:
            s = self.endpoint.settings
            self._arm(idle_limit(s.ping_interval, s.ping_timeout, s.poll_timeout), self._expire)
        else:
            self._arm(self.endpoint.settings.close_timeout, self.abort)

    def attach_stream(self, stream: Carrier, after: int) -> bool:
        """Make ``stream`` the session's event stream, resuming after frame ``after``.

        False (nothing written) if the frames after ``after`` are no longer all
        here: the caller tells the client it is gone."""
        if not self.buffer.valid(after):
            if self.open:
                return False
            after = self.buffer.acked  # closing, its frames dropped: the close is what is left
        old, self.stream = self.stream, stream
        if old is not None:
            old.finish(None, None)  # one stream at a time: the new one replaces it
        self.attach()
        self.buffer.rewind(after)
        self.flush()
        if not self.open and self.stream is stream:
            self._finish_stream()
        return True

    def detach_stream(self, stream: Carrier) -> None:
        """``stream``'s connection is gone (or it was replaced)."""
        if self.stream is stream:
            self.stream = None
            self.detach()

    async def wait_poll(
        self, after: int, wait: float, fut: asyncio.Future[bool]
    ) -> tuple[list[tuple[int, bytes]], int, tuple[int, str] | None] | None:
        """A long poll: ``(frames after `after`, the last number, the close if closed)``.

        ``after`` acknowledges the frames up to it. Waits up to ``wait``
        seconds when nothing is pending. None if ``after`` cannot be served
        (frames after it were forgotten, or it is in the future). A second
        poll, or the loss of this one's connection (:meth:`end_poll` of
        ``fut``, a new future of the caller), ends this one with no frames."""
        if not self.buffer.valid(after):
            if self.open:
                return None
            after = self.buffer.acked  # closing, its frames dropped: the close is what is left
        self.buffer.ack(after)
        old = self.poll
        if old is not None and not old.done():
            old.set_result(False)  # one poll at a time: the new one replaces it
        self.poll = fut
        self.attach()
        try:
            if self.open and self.buffer.last == after:
                try:
                    await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    pass
        finally:
            if self.poll is fut:
                self.poll = None
            self.detach()
        if fut.done() and fut.result() is False:
            return [], after, None
        frames = self.buffer.since(after) if self.buffer.valid(after) else []
        last = frames[-1][0] if frames else after
        if self.open:
            return frames, last, None
        closed = self.close_info or (GOING_AWAY, "session ended")
        self.delivered_close()
        return frames, last, closed

    def end_poll(self, fut: asyncio.Future[bool] | None) -> None:
        """The HTTP connection of the poll waiting on ``fut`` is gone."""
        if fut is not None and not fut.done():
            fut.set_result(False)

    def _arm(self, delay: float, fn: Callable[[], None]) -> None:
        self._cancel()
        self._timer = self.loop.call_later(delay, fn)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
