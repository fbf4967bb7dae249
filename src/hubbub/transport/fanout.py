"""One encoded frame to many connections: the compiled fast path and its policy.

Two C functions (:mod:`hubbub.transport._speedups`; their contract is at the
top of ``_speedups.c``) take the per-recipient work of a broadcast out of
Python:

* :func:`fanout` (``Server.push_many`` and ``Server.broadcast``) writes the
  frame straight to each recipient's socket (``send(2)`` with
  ``MSG_DONTWAIT | MSG_NOSIGNAL``) when nothing of that connection waits
  anywhere (its ``out`` queue and its transport's buffer are empty) and the
  policy below allows it; otherwise it queues the frame exactly as
  :meth:`WebSocketConnection.write` does, for the end of the tick;
* :func:`flush` (the end-of-tick write, :meth:`ServerEndpoint.flush_writes`)
  sends each connection's queued bytes with one ``send(2)`` when its
  transport's buffer is empty.

Per recipient they read and write :class:`WebSocketConnection`'s slots in
place (``set_connection_type``), ask uvloop's transport whether it is closing,
and ask for its write-buffer size only when the connection's ``tx_empty`` does
not already say it is empty (``tx_empty`` is cleared before every byte handed
to the transport, see ``_speedups.c``). What is left per recipient is mostly
the send(2) itself: the connections' objects are asked for from memory
(prefetched) while the previous recipient's send runs.

Whatever the socket does not take (part of the bytes, or all of them on
``EAGAIN`` or an error) goes through the Python path: the connection's
``flush_out`` hands it to the transport, with the usual backpressure
(``max_send_buffer``, ``pause_writing``). So do the connections whose bytes
must go through the transport (TLS, permessage-deflate, sessions of the
other carriages). A connection's bytes never reorder: a direct write happens
only when nothing of it waits anywhere, and what follows goes behind it
through the same queue.

Policy (:class:`FanOut`): under load several messages arrive in one tick,
and there the end-of-tick write is the big win (one ``send(2)`` per client
for all of them; see docs/benchmarks.md). So the direct write is taken only
for the first fan-out of a tick, and only if the last tick that had a
fan-out had just one. A busy tick (two fan-outs or more) turns the direct
write off until a tick carries a single fan-out again; its frames are queued
(in C) and flushed (in C) at the end of the tick.

Without the extension (it did not build or import, or ``HUBBUB_NO_SPEEDUPS=1``
is set in the environment) everything goes through the Python path, as
before it existed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from websockets.frames import Opcode

Fanout = Callable[[bytes, Iterable[Any], Any, list[Any], bool], tuple[int, list[Any], bool]]
Flush = Callable[[list[Any]], list[Any]]

_fanout: Fanout | None
_flush: Flush | None
try:
    from ._speedups import fanout as _fanout
    from ._speedups import flush as _flush
    from ._speedups import set_connection_type, set_transport_type
except ImportError:  # no compiler when installed (or an older build): the Python path
    _fanout = _flush = None
else:
    # Bytes go straight to the socket only for uvloop's TCP transports (what the
    # closing and buffer rules in _speedups.c are about); any other transport,
    # e.g. a wrapper, gets them through its write().
    from uvloop.loop import TCPTransport

    from .websocket import WebSocketConnection

    set_transport_type(TCPTransport)
    try:
        # Its sockfd, out, transport and tx_empty slots are read in place.
        set_connection_type(WebSocketConnection)
    except TypeError:  # a layout the C code does not know: getattr, as for any object
        pass

if os.environ.get("HUBBUB_NO_SPEEDUPS", "") not in ("", "0"):
    _fanout = _flush = None

#: True when the compiled fan-out is in use.
AVAILABLE = _fanout is not None


class Dirty(Protocol):
    """What :meth:`FanOut.send` queues for: the endpoint's end-of-tick list."""

    _dirty: list[Any]

    def schedule_flush(self) -> None: ...


class FanOut:
    """The compiled path's switch and its per-tick policy."""

    __slots__ = ("_count", "_last", "at_tick_end", "enabled")

    def __init__(self, enabled: bool | None = None) -> None:
        #: Compiled fan-out and flush on (default: when the extension is available).
        self.enabled = AVAILABLE if enabled is None else enabled and AVAILABLE
        #: Makes sure :meth:`tick_end` runs when this tick ends (the endpoint's
        #: end-of-tick flush calls it: one callback per tick for both).
        self.at_tick_end: Callable[[], None] = self._call_soon_tick_end
        self._count = 0  # fan-outs in this tick
        self._last = 0  # fan-outs in the last tick that had any

    def _call_soon_tick_end(self) -> None:
        asyncio.get_running_loop().call_soon(self.tick_end)

    def tick_end(self) -> None:
        """The tick is over: remember how many fan-outs it had."""
        if self._count:
            self._last = self._count
            self._count = 0

    def direct(self) -> bool:
        """Count one fan-out in this tick; True if it may write directly."""
        count = self._count
        self._count = count + 1
        if count == 0:
            self.at_tick_end()
            return self.enabled and self._last <= 1
        return False

    def send(
        self,
        frame: bytes,
        data: str | bytes,
        opcode: Opcode | None,
        items: Iterable[Any],
        conns: dict[int, Any] | None,
        endpoint: Dirty,
        direct: bool,
    ) -> int:
        """Write ``frame`` to ``items`` (connections, or keys of ``conns``): directly
        where ``direct`` allows it, else queued; returns how many."""
        assert _fanout is not None
        n, slow, dirtied = _fanout(frame, items, conns, endpoint._dirty, direct)
        if dirtied:
            endpoint.schedule_flush()
        for conn in slow:
            conn.send_frame_bytes(frame, data, opcode)
        return n

    @staticmethod
    def flush(dirty: list[Any]) -> list[Any]:
        """Send what ``dirty`` connections queued; returns those left to ``flush_out``."""
        assert _flush is not None
        return _flush(dirty)
