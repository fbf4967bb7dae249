"""Closing a worker's clients: a Close frame each, then wait (bounded) for the
server to end TCP, then drop the stragglers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from picows import WSCloseCode


async def close_all(clients: Iterable[Any], wait_s: float) -> None:
    """Close every client (``closing`` set, a Close frame unless one was sent),
    wait up to ``wait_s`` for the disconnections, then disconnect the rest."""
    transports = []
    for c in clients:
        c.closing = True
        t = c.transport
        if t is not None and not t.is_disconnected:
            if not t.is_close_frame_sent:
                t.send_close(WSCloseCode.OK)
            transports.append(t)
    if not transports:
        return
    waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
    _, pending = await asyncio.wait(waits, timeout=wait_s)
    for fut in pending:
        fut.cancel()
    for t in transports:
        if not t.is_disconnected:
            t.disconnect(graceful=False)
    # Collect results (wait_disconnected re-raises local failures).
    for fut in waits:
        if not fut.cancelled():
            fut.exception()
