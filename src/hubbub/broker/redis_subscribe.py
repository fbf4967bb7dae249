"""The Redis broker's subscriber half, and its connections (see :mod:`hubbub.broker.redis`).

The subscriber owns one connection per life: a reader task reads it, a commander
task writes the SUBSCRIBE/UNSUBSCRIBE commands that bring Redis in line with the
wanted set, and a watchdog task PINGs it once it has been silent for
``health_interval`` seconds and gives it up if nothing comes back within as long
again. The reader reads without a timeout per reply (redis-py builds an
``asyncio.timeout``, a timer pushed and cancelled, for each read that has one):
the watchdog alone measures silence, from the time of the last read. Whichever of
the three fails first ends the connection; the others are cancelled.

Frames come in here, single or batched, are told apart from this node's own
(dropped: they were delivered when published) and handed to ``deliver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from .base import BrokerError, Deliver, NodeDeliver
from .frames import BATCH, batch_origin, decode_batch, decode_frame

log = logging.getLogger("hubbub.broker.redis")

#: How many channels one SUBSCRIBE/UNSUBSCRIBE names, and PUBLISHes one round trip sends.
_CHUNK = 256
_BATCH_MAGIC = bytes([BATCH])

#: What a lost or broken connection raises.
_IO_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError, EOFError)


class _Subscriber:
    """Connections, subscriptions and what comes in (a part of ``RedisBroker``, which
    sets every attribute below in its ``__init__``)."""

    prefix: str
    node_id: str
    on_reconnect: Callable[[], None] | None
    max_payload: int
    max_node_payload: int
    subscribe_timeout: float
    health_interval: float
    backoff_min: float
    backoff_max: float
    _node: bytes
    _deliver: Deliver | None
    _on_node: NodeDeliver | None
    _node_channel: bytes | None
    _pool: ConnectionPool | None
    _closing: bool
    _counts: dict[str, int]
    _channels: dict[bytes, str]
    _confirmed: dict[bytes, asyncio.Event]
    _pending: dict[bytes, int]
    _sent: set[bytes]
    _dirty: asyncio.Event
    _notify_after_resubscribe: bool
    _read_at: float  # when the reader last read a reply (the event loop's clock)
    delivered: int
    bad_frames: int
    reconnects: int
    node_received: int

    # -- connections ----------------------------------------------------------------

    def _where(self) -> str:
        pool = self._pool
        kw = pool.connection_kwargs if pool is not None else {}
        if "path" in kw:
            return f"unix:{kw['path']}"
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    async def _connect(self, role: str) -> AbstractConnection:
        assert self._pool is not None
        conn = self._pool.make_connection()
        conn.client_name = f"hubbub-{self.node_id}-{role}"
        try:
            await conn.connect()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    async def _reconnect(self, role: str) -> AbstractConnection | None:
        """Connect with back-off until it works; None once the broker closes."""
        delay = self.backoff_min
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                return await self._connect(role)
            except _IO_ERRORS as exc:
                log.debug("redis %s: reconnect failed: %s", role, exc)
            delay = min(delay * 2, self.backoff_max)
        return None

    # -- subscriptions --------------------------------------------------------------

    def channel(self, room: str) -> bytes:
        return f"{self.prefix}{{{room}}}".encode()

    def node_channel(self, node: str) -> bytes:
        """Node ``node``'s own channel (never a room's: those start with a brace)."""
        return f"{self.prefix}node:{{{node}}}".encode()

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._counts)

    async def subscribe(self, room: str) -> None:
        if self._deliver is None or self._closing:
            raise BrokerError("broker is not started")
        ch = self.channel(room)
        count = self._counts.get(room, 0)
        self._counts[room] = count + 1
        if count == 0:
            self._channels[ch] = room
            event = self._confirmed[ch] = asyncio.Event()
            if ch in self._sent and ch not in self._pending:
                # Unsubscribed and subscribed again before the UNSUBSCRIBE went out:
                # Redis still has (and confirmed) the subscription.
                event.set()
            self._dirty.set()
        confirmed = self._confirmed[ch]
        try:
            await asyncio.wait_for(confirmed.wait(), self.subscribe_timeout)
        except TimeoutError:
            self.unsubscribe(room)
            raise BrokerError(
                f"Redis at {self._where()} did not confirm the subscription to {room!r} "
                f"within {self.subscribe_timeout}s"
            ) from None

    def unsubscribe(self, room: str) -> None:
        count = self._counts.get(room, 0)
        if count > 1:
            self._counts[room] = count - 1
            return
        if count == 0:
            return
        del self._counts[room]
        ch = self.channel(room)
        self._channels.pop(ch, None)
        self._confirmed.pop(ch, None)
        self._dirty.set()

    async def _subscriber(self, conn: AbstractConnection | None) -> None:
        while not self._closing:
            if conn is None:
                conn = await self._reconnect("sub")
                if conn is None:
                    return
                self.reconnects += 1
                self._notify_after_resubscribe = True
                log.info("redis subscriber reconnected to %s", self._where())
            try:
                await self._session(conn)
            except _IO_ERRORS as exc:
                if not self._closing:
                    log.warning("redis subscriber lost its connection: %s", exc)
            finally:
                await conn.disconnect(nowait=True)
                conn = None
                self._sent = set()
                self._pending.clear()
                for event in self._confirmed.values():
                    event.clear()

    async def _session(self, conn: AbstractConnection) -> None:
        """One connection's life: a reader, a commander and a watchdog, until one of
        them fails (its error is raised here) or the broker closes."""
        self._read_at = asyncio.get_running_loop().time()
        tasks = [
            asyncio.create_task(self._read(conn), name="hubbub-redis-read"),
            asyncio.create_task(self._commander(conn), name="hubbub-redis-subcmd"),
            asyncio.create_task(self._watch(conn), name="hubbub-redis-watch"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the first failure, if any, ends the connection
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _commander(self, conn: AbstractConnection) -> None:
        """Bring this connection's subscriptions in line with the wanted set."""
        self._dirty.set()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            want = set(self._channels)
            add = sorted(want - self._sent)
            drop = sorted(self._sent - want)
            if (add or drop) and not conn.is_connected:
                raise ConnectionError("subscriber connection closed")
            for i in range(0, len(add), _CHUNK):
                chunk = add[i : i + _CHUNK]
                for ch in chunk:
                    self._pending[ch] = self._pending.get(ch, 0) + 1
                self._sent.update(chunk)
                await conn.send_command("SUBSCRIBE", *chunk)
            for i in range(0, len(drop), _CHUNK):
                chunk = drop[i : i + _CHUNK]
                self._sent.difference_update(chunk)
                await conn.send_command("UNSUBSCRIBE", *chunk)
            self._check_resubscribed()

    async def _read(self, conn: AbstractConnection) -> None:
        """Read replies until the connection fails. No timeout per read (an
        ``asyncio.timeout`` per message is a timer pushed and cancelled each time):
        ``_watch`` notices a silent connection, from the time of the last read."""
        clock = asyncio.get_running_loop().time
        while not self._closing:
            reply = await conn.read_response(timeout=math.inf)
            self._read_at = clock()
            if not isinstance(reply, list) or not reply:
                continue  # PONG outside subscribed mode
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self._on_message(reply[1], reply[2])
            elif kind == b"subscribe":
                self._on_subscribed(reply[1])

    async def _watch(self, conn: AbstractConnection) -> None:
        """PING the connection once it has been silent for ``health_interval``
        seconds; raise if nothing (the PONG or anything else) comes within as long."""
        clock = asyncio.get_running_loop().time
        interval = self.health_interval
        while True:
            silent = clock() - self._read_at
            if silent < interval:
                await asyncio.sleep(interval - silent)
                continue
            pinged = clock()
            await conn.send_command("PING")
            await asyncio.sleep(interval)
            if self._read_at < pinged:
                raise TimeoutError(f"no answer to PING within {interval}s")

    def _on_subscribed(self, ch: bytes) -> None:
        left = self._pending.get(ch, 0) - 1
        if left > 0:
            self._pending[ch] = left
            return
        self._pending.pop(ch, None)
        event = self._confirmed.get(ch)
        if event is not None and ch in self._sent:
            event.set()
        self._check_resubscribed()

    def _check_resubscribed(self) -> None:
        if not self._notify_after_resubscribe or self._pending:
            return
        if not all(ch in self._sent for ch in self._channels):
            return
        self._notify_after_resubscribe = False
        if self.on_reconnect is not None:
            try:
                self.on_reconnect()
            except Exception:
                log.exception("on_reconnect callback failed")

    def _on_message(self, ch: bytes, data: bytes) -> None:
        if ch == self._node_channel:
            self._on_node_message(data)
            return
        room = self._channels.get(ch)
        if room is None:
            return  # in flight when we unsubscribed
        if data[:1] == _BATCH_MAGIC:
            if batch_origin(data) == self._node:
                return  # delivered locally when they were published
            try:
                _, frames = decode_batch(data, self.max_payload)
            except ValueError as exc:
                self._bad_frame(ch, exc)
                return
            for payload, seq in frames:
                self._deliver_safely(room, payload, seq)
            return
        try:
            origin, payload, seq = decode_frame(data)
        except ValueError as exc:
            self._bad_frame(ch, exc)
            return
        if origin == self._node:
            return  # delivered locally when it was published
        if len(payload) > self.max_payload:
            self.bad_frames += 1
            return
        self._deliver_safely(room, payload, seq)

    def _bad_frame(self, ch: bytes, exc: ValueError) -> None:
        self.bad_frames += 1
        if self.bad_frames == 1 or self.bad_frames % 1000 == 0:
            log.warning("dropped %d malformed frame(s) on %r: %s", self.bad_frames, ch, exc)

    def _on_node_message(self, data: bytes) -> None:
        try:
            origin, payload, _ = decode_frame(data)
        except ValueError as exc:
            origin, payload = b"", b""
            log.debug("malformed frame on this node's channel: %s", exc)
        on_node = self._on_node
        if not origin or origin == self._node or len(payload) > self.max_node_payload:
            self.bad_frames += 1
            if self.bad_frames == 1 or self.bad_frames % 1000 == 0:
                log.warning(
                    "dropped %d malformed frame(s), on this node's channel", self.bad_frames
                )
            return
        if on_node is None:
            return
        self.node_received += 1
        try:
            on_node(origin.decode("ascii", "replace"), payload)
        except Exception:
            log.exception("on_node failed for a payload from %r", origin)

    def _deliver_safely(self, room: str, payload: bytes, seq: int | None) -> None:
        if self._deliver is None:
            return
        self.delivered += 1
        try:
            self._deliver(room, payload, seq)
        except Exception:
            log.exception("deliver failed for a frame of room %r", room)
