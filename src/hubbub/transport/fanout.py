"""One encoded frame to many connections: the compiled fast path and its policy.

At a steady rate most event-loop ticks carry one message, so the end-of-tick
write (:meth:`WebSocketConnection.write`, one system call per client per tick)
has nothing to coalesce and only adds Python work per recipient (queue, mark
dirty, flush, ``transport.write``). The C function
:func:`hubbub.transport._speedups.fanout` writes the frame straight to each
recipient's socket instead (``send(2)`` with ``MSG_DONTWAIT | MSG_NOSIGNAL``),
when nothing of that connection waits anywhere: its ``out`` queue is empty
and so is its transport's buffer. Every other recipient (bytes already
queued, a partial write, ``EAGAIN``, an error, TLS, permessage-deflate) takes
the Python path with the same backpressure (``max_send_buffer``,
``pause_writing``); a partial write queues the rest of the frame. A
connection's bytes never reorder: a direct write happens only when nothing of
it is queued, and whatever follows goes through the queue behind it.

Policy (:class:`FanOut`): under load several messages arrive in one tick,
and there the end-of-tick write is the big win (one ``write()`` per client
for all of them; see docs/benchmarks.md). So the direct path is taken only
for the first fan-out of a tick, and only if the last tick that had a
fan-out had just one. A busy tick (two fan-outs or more) turns the direct
path off until a tick carries a single fan-out again.

Without the extension (it did not build or import, or ``HUBBUB_NO_SPEEDUPS=1``
is set in the environment) everything goes through the Python path, as
before it existed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from websockets.frames import Opcode

    from .websocket import WebSocketConnection

Direct = Callable[[bytes, Iterable[Any], Any], tuple[int, list[Any], list[Any]]]

_direct: Direct | None
try:
    from ._speedups import fanout as _direct
except ImportError:  # no compiler when installed: the Python path does it all
    _direct = None

if os.environ.get("HUBBUB_NO_SPEEDUPS", "") not in ("", "0"):
    _direct = None

#: True when the compiled fan-out is in use.
AVAILABLE = _direct is not None


class FanOut:
    """Decides, per loop tick, whether a fan-out may write directly."""

    __slots__ = ("_count", "_last", "enabled")

    def __init__(self, enabled: bool | None = None) -> None:
        #: Direct writes on (default: when the extension is available).
        self.enabled = AVAILABLE if enabled is None else enabled and AVAILABLE
        self._count = 0  # fan-outs in this tick
        self._last = 0  # fan-outs in the last tick that had any

    def _tick_end(self) -> None:
        self._last = self._count
        self._count = 0

    def direct(self) -> bool:
        """Count one fan-out in this tick; True if it may write directly."""
        count = self._count
        self._count = count + 1
        if count == 0:
            asyncio.get_running_loop().call_soon(self._tick_end)
            return self.enabled and self._last <= 1
        return False

    def send(
        self,
        frame: bytes,
        data: str | bytes,
        opcode: Opcode | None,
        items: Iterable[Any],
        conns: dict[int, WebSocketConnection] | None,
    ) -> int:
        """Write ``frame`` to ``items`` (connections, or keys of ``conns``)
        directly where possible, and queue it for the rest; returns how many."""
        assert _direct is not None
        n, slow, partial = _direct(frame, items, conns)
        for conn in slow:
            conn.send_frame_bytes(frame, data, opcode)
        for conn, rest in partial:
            conn.write(rest)
        return n
