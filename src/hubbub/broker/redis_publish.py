"""The Redis broker's publisher half (see :mod:`hubbub.broker.redis`): the outgoing
queue, bounded in frames and bytes (the oldest dropped when full), and the task that
sends it in rounds, pipelined, batching the frames of one room (wire version 2)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import NamedTuple

from redis.asyncio.connection import AbstractConnection

from .base import Lost, hand_to_self, tell_lost
from .frames import frame_size, pack_round, valid_node_id
from .redis_subscribe import _CHUNK, _IO_ERRORS, _Subscriber

log = logging.getLogger("hubbub.broker.redis")

#: One publisher round takes at most this many queued frames, and stops taking more once
#: it holds this many bytes.
_ROUND_FRAMES = 4096
_ROUND_BYTES = 1024 * 1024


def _no_callback() -> None:
    """The ``on_lost`` of a node payload sent without one (marks it a node payload)."""


class _Outgoing(NamedTuple):
    """One queued frame: its channel, payload and seq, its size on the wire as a single
    frame (what the queue's byte bound counts), and for a node payload its ``on_lost``
    (None for a room frame, which is sent again after a failed round trip)."""

    channel: bytes
    payload: bytes
    seq: int | None
    size: int
    lost: Lost | None


class _Publisher(_Subscriber):
    """The outgoing queue and the publisher task (a part of ``RedisBroker``, which sets
    every attribute below in its ``__init__``)."""

    wire: int
    max_queue: int
    max_queue_bytes: int
    io_timeout: float
    _queue: deque[_Outgoing]
    _queue_bytes: int
    _wake: asyncio.Event
    _overflowing: bool
    published: int
    dropped: int
    node_sent: int
    node_lost: int
    batches: int
    batched: int

    def publish(self, room: str, payload: bytes, seq: int | None = None) -> None:
        if self._deliver is None or self._closing:
            return
        self._deliver_safely(room, payload, seq)
        if len(payload) > self.max_payload:
            self.dropped += 1
            log.error("frame of %d bytes for %r not sent to other nodes", len(payload), room)
            return
        if seq is not None and not 0 <= seq < 2**64:
            raise ValueError(f"seq out of range: {seq}")
        size = frame_size(self._node, payload)
        self._queue.append(_Outgoing(self.channel(room), payload, seq, size, None))
        self._queue_bytes += size
        self.published += 1
        self._trim()
        self._wake.set()

    def send_node(self, node: str, payload: bytes, on_lost: Lost | None = None) -> None:
        if (
            self._deliver is None
            or self._closing
            or len(payload) > self.max_node_payload
            or not valid_node_id(node)
        ):
            self.node_lost += 1
            tell_lost(on_lost)
            return
        self.node_sent += 1
        if node == self.node_id:
            if not hand_to_self(self._on_node, self.node_id, payload, on_lost):
                self.node_lost += 1
            return
        size = frame_size(self._node, payload)
        self._queue.append(
            _Outgoing(self.node_channel(node), payload, None, size, on_lost or _no_callback)
        )
        self._queue_bytes += size
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        while len(self._queue) > self.max_queue or self._queue_bytes > self.max_queue_bytes:
            _, _, _, size, lost = self._queue.popleft()
            self._queue_bytes -= size
            self.dropped += 1
            if lost is not None:
                self.node_lost += 1
                tell_lost(lost)
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "redis outgoing queue full (%d frames, %d bytes): dropping the oldest",
                    self.max_queue,
                    self.max_queue_bytes,
                )

    @property
    def backlog(self) -> int:
        """Frames waiting to be sent to Redis."""
        return len(self._queue)

    def _take_round(self) -> list[_Outgoing]:
        """The frames of one round, from the head of the queue (at least one)."""
        queue = self._queue
        items = [queue.popleft()]
        size = items[0].size
        while queue and len(items) < _ROUND_FRAMES and size < _ROUND_BYTES:
            item = queue.popleft()
            items.append(item)
            size += item.size
        self._queue_bytes -= size
        return items

    async def _publisher(self, conn: AbstractConnection | None) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._overflowing = False
                await self._wake.wait()
                self._wake.clear()
                continue
            if conn is None:
                conn = await self._reconnect("pub")
                if conn is None:
                    break
                log.info("redis publisher reconnected to %s", self._where())
            items = self._take_round()
            commands = pack_round(
                self._node,
                [(it.channel, it.payload, it.seq, it.lost is None) for it in items],
                batches=self.wire >= 2,
            )
            for _, _, indexes in commands:
                if len(indexes) > 1:
                    self.batches += 1
                    self.batched += len(indexes)
            answered = written = 0
            try:
                for c in range(0, len(commands), _CHUNK):
                    chunk = commands[c : c + _CHUNK]
                    written = c + len(chunk)  # (a failed write may have sent part of it)
                    await conn.send_packed_command(
                        conn.pack_commands([("PUBLISH", ch, wire) for ch, wire, _ in chunk]),
                        check_health=False,
                    )
                    for _, _, indexes in chunk:
                        reply = await conn.read_response(timeout=self.io_timeout)
                        if reply is None:
                            raise TimeoutError(f"no answer to PUBLISH within {self.io_timeout}s")
                        answered += 1
                        lost = items[indexes[0]].lost
                        if lost is not None and reply == 0:  # no node listens on that channel
                            self.node_lost += 1
                            tell_lost(lost)
            except _IO_ERRORS as exc:
                log.warning("redis publisher lost its connection: %s", exc)
                await conn.disconnect(nowait=True)
                conn = None
                # Unknown whether the unanswered frames that were written went out:
                # room frames are sent again (at-least-once, in the order published),
                # node payloads not (at-most-once). Commands after the last write were
                # never sent: all of them go again.
                unsent = {i for _, _, ix in commands[written:] for i in ix}
                unanswered = sorted(i for _, _, ix in commands[answered:] for i in ix)
                again = [items[i] for i in unanswered if items[i].lost is None or i in unsent]
                self.dropped += len(unanswered) - len(again)
                self._queue.extendleft(reversed(again))
                self._queue_bytes += sum(it.size for it in again)
                self._trim()
                if self._closing:
                    break
        if conn is not None:
            await conn.disconnect(nowait=True)
