"""Fan-out between nodes over Redis pub/sub.

Each room is one channel, ``<prefix>{<room>}``: the braces are a Redis Cluster
hash tag, so a room's channel always hashes to one slot (ready for sharded
pub/sub). A node subscribes only to the rooms it has members in.

Every frame on the wire is a fixed binary header (the origin node id, the seq)
then the encoded frame (:mod:`hubbub.broker.frames`). Frames a node publishes
are delivered to its own members inside ``publish`` (they do not wait for
Redis, and keep flowing while Redis is down); the copy that comes back from
Redis is recognised by its origin and dropped.

Batches (wire version 2, the default): the frames of one room that are queued
when the publisher task runs (those published in the same loop tick, or while the
previous round trip was out; never held back for a timer) go in one ``PUBLISH``,
at most ``BATCH_MAX_FRAMES`` frames and ``BATCH_MAX_BYTES`` bytes each; a lone frame
goes as a version 1 frame. A receiver unpacks a batch and hands each frame to
``deliver`` in order, as if published one by one: one Redis message, one reply
and one read instead of one per frame. ``wire=1`` (the URL's ``?wire=1``, or the
argument) sends only version 1 frames, for a rolling restart from a version that
cannot read batches (docs/scaling.md, *The wire between nodes*); every node reads
both.

Connections are redis-py asyncio connections driven by hubbub's own loops, not
by redis-py's pub/sub object (whose reconnects have lost subscriptions: redis-py
#2089, #2417, #3203):

* the **subscriber** owns one connection: one task reads it, one writes the
  SUBSCRIBE/UNSUBSCRIBE commands that bring Redis in line with the wanted set. It
  PINGs when the connection has been silent for ``health_interval`` seconds and
  gives it up if the PONG does not come within as long again. After a loss it
  reconnects with exponential back-off (with jitter, up to ``backoff_max``),
  resubscribes every wanted room and, once Redis has confirmed them all, calls
  ``on_reconnect()``: frames published meanwhile were lost, so the app re-reads
  positions from the store.
* the **publisher** owns another: one task sends the outgoing queue in order,
  pipelined (up to 256 ``PUBLISH`` per round trip, a round at most ``_ROUND_FRAMES``
  frames and about ``_ROUND_BYTES`` bytes), so one node's frames of one room reach
  Redis, and so every subscriber, in publication order. ``publish``
  never blocks: it appends to a queue bounded in frames (``max_queue``) and bytes
  (``max_queue_bytes``). **When the queue is full the oldest frames are dropped**
  (counted in ``dropped``, logged once per outage): other nodes miss them and see
  a gap in ``seq``, which the app fills from the store. A round trip that fails is
  sent again after the reconnect, so another node may receive a frame twice
  (at-least-once; ``seq`` tells).

Node channels (``send_node``): each node started with ``on_node`` subscribes to
``<prefix>node:{<node id>}`` (on the subscriber connection, with the rooms, so it
is restored after a reconnect like them). A payload for another node is one
``PUBLISH`` on that channel, in the same outgoing queue as room frames (one
node's payloads to another arrive in the order sent), with the same header
(the origin says who sent it; no seq). Unlike room frames they are **at most
once**: a round trip that fails is not sent again for them (a duplicate direct
message would show; a lost one cannot be told apart from a slow one). Redis's
answer to ``PUBLISH`` is the number of subscribers that received it: 0 means no
node listens on that channel (the node is dead or cut off from Redis), and the
sender's ``on_lost`` is called; so is it for a payload dropped from the full
queue or over ``max_node_payload`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from .base import (
    NODE_PAYLOAD_MAX,
    BrokerError,
    Deliver,
    Lost,
    NodeDeliver,
    hand_to_self,
    tell_lost,
)
from .frames import (
    BATCH,
    batch_origin,
    decode_batch,
    decode_frame,
    encode_frame,
    frame_size,
    pack_round,
    valid_node_id,
)

__all__ = ["RedisBroker", "decode_frame", "encode_frame"]

log = logging.getLogger("hubbub.broker.redis")

#: How many channels one SUBSCRIBE/UNSUBSCRIBE names, and PUBLISHes one round trip sends.
_CHUNK = 256
#: One publisher round takes at most this many queued frames, and stops taking more once
#: it holds this many bytes.
_ROUND_FRAMES = 4096
_ROUND_BYTES = 1024 * 1024
#: The wire versions a node may send (frames.py); it reads every one of them.
WIRE_VERSIONS = (1, 2)
_BATCH_MAGIC = bytes([BATCH])

#: What a lost or broken connection raises.
_IO_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError, EOFError)


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


def _take_wire(url: str) -> tuple[str, str | None]:
    """``url`` without its ``wire`` query parameter, and that parameter (None if absent)."""
    parts = urlsplit(url)
    if "wire=" not in parts.query:
        return url, None
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [v for k, v in query if k == "wire"]
    rest = [(k, v) for k, v in query if k != "wire"]
    return urlunsplit(parts._replace(query=urlencode(rest))), values[-1] if values else None


class RedisBroker:
    """``RedisBroker(url, *, prefix="hubbub:", node_id=None, on_reconnect=None, ...)``.

    ``url``: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS,
    ``unix://`` for a socket). ``prefix`` starts every channel name (no braces).
    ``node_id`` names this node in frame headers and its node channel (1-64
    printable ASCII characters without ``/``; random by default; must differ between
    nodes). ``on_reconnect()`` is called after the subscriptions were restored
    following a connection loss. ``max_node_payload`` bounds what ``send_node``
    sends and what the node channel accepts. ``wire`` is the newest wire version
    sent: 2 (batches, the default) or 1 (single frames only); the URL may say it
    instead (``?wire=1``).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hubbub:",
        node_id: str | None = None,
        on_reconnect: Callable[[], None] | None = None,
        max_queue: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        max_payload: int = 1024 * 1024,
        max_node_payload: int = NODE_PAYLOAD_MAX,
        subscribe_timeout: float = 5.0,
        health_interval: float = 5.0,
        io_timeout: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        wire: int | None = None,
    ) -> None:
        url, wire_param = _take_wire(url)
        if wire is None:
            wire = 2 if wire_param is None else int(wire_param) if wire_param.isdigit() else 0
        if wire not in WIRE_VERSIONS:
            raise ValueError(f"wire must be one of {', '.join(map(str, WIRE_VERSIONS))}")
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces (the room is the hash tag)")
        node = node_id if node_id is not None else uuid.uuid4().hex[:16]
        if not valid_node_id(node):
            raise ValueError("node_id must be 1-64 printable ASCII characters, without '/'")
        if min(max_queue, max_queue_bytes, max_payload, max_node_payload) < 1:
            raise ValueError("queue and payload limits must be positive")
        if min(subscribe_timeout, health_interval, io_timeout, backoff_min) <= 0:
            raise ValueError("timeouts and back-off must be positive")
        self.url = url
        self.wire = wire
        self.prefix = prefix
        self.node_id = node
        self.on_reconnect = on_reconnect
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_payload = max_payload
        self.max_node_payload = max_node_payload
        self.subscribe_timeout = subscribe_timeout
        self.health_interval = health_interval
        self.io_timeout = io_timeout
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self._node = node.encode()
        self._deliver: Deliver | None = None
        self._on_node: NodeDeliver | None = None
        #: This node's channel while it listens (``start`` with ``on_node``).
        self._node_channel: bytes | None = None
        self._pool: ConnectionPool | None = None
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        # Subscriptions: counts per room, the wanted channels, confirmations.
        self._counts: dict[str, int] = {}
        self._channels: dict[bytes, str] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self._pending: dict[bytes, int] = {}  # SUBSCRIBEs sent, not yet confirmed
        self._sent: set[bytes] = set()  # what this connection was told to subscribe
        self._dirty = asyncio.Event()
        self._notify_after_resubscribe = False
        # Outgoing frames.
        self._queue: deque[_Outgoing] = deque()
        self._queue_bytes = 0
        self._wake = asyncio.Event()
        self._overflowing = False
        #: Counters, for metrics and tests.
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.bad_frames = 0
        self.reconnects = 0
        self.node_sent = 0
        self.node_received = 0
        self.node_lost = 0
        #: PUBLISHes that carried a batch, and the frames they carried.
        self.batches = 0
        self.batched = 0

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, deliver: Deliver, on_node: NodeDeliver | None = None) -> None:
        if self._deliver is not None:
            raise BrokerError("broker already started")
        self._pool = ConnectionPool.from_url(
            self.url,
            protocol=2,
            socket_connect_timeout=self.io_timeout,
            socket_timeout=self.io_timeout,
            socket_keepalive=True,
        )
        try:
            sub = await self._connect("sub")
            pub = await self._connect("pub")
        except _IO_ERRORS as exc:
            await self._pool.disconnect()
            raise BrokerError(f"cannot reach Redis at {self._where()}: {exc}") from exc
        self._deliver = deliver
        if on_node is not None:
            ch = self._node_channel = self.node_channel(self.node_id)
            self._on_node = on_node
            self._channels[ch] = ""  # not a room: _on_message routes it to on_node
            self._confirmed[ch] = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._subscriber(sub), name="hubbub-redis-sub"),
            asyncio.create_task(self._publisher(pub), name="hubbub-redis-pub"),
        ]
        if on_node is not None:
            await self._await_node_channel()

    async def _await_node_channel(self) -> None:
        assert self._node_channel is not None
        try:
            await asyncio.wait_for(
                self._confirmed[self._node_channel].wait(), self.subscribe_timeout
            )
        except TimeoutError:
            await self.close()
            raise BrokerError(
                f"Redis at {self._where()} did not confirm this node's channel "
                f"within {self.subscribe_timeout}s"
            ) from None

    async def close(self) -> None:
        """Send what is queued (for at most ``io_timeout`` seconds), then stop."""
        if self._deliver is None or self._closing:
            return
        self._closing = True
        self._wake.set()
        sub_task, pub_task = self._tasks
        sub_task.cancel()
        try:
            await asyncio.wait_for(pub_task, self.io_timeout)
        except TimeoutError:
            log.warning("redis broker closed with %d frames unsent", len(self._queue))
        with contextlib.suppress(asyncio.CancelledError):
            await sub_task
        if self._pool is not None:
            await self._pool.disconnect()
        self._deliver = None
        self._on_node = None
        self._tasks = []

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
            commander = asyncio.create_task(self._commander(conn), name="hubbub-redis-subcmd")
            try:
                await self._read(conn, commander)
            except _IO_ERRORS as exc:
                if not self._closing:
                    log.warning("redis subscriber lost its connection: %s", exc)
            finally:
                commander.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await commander  # its failure, if any, ended the connection
                await conn.disconnect(nowait=True)
                conn = None
                self._sent = set()
                self._pending.clear()
                for event in self._confirmed.values():
                    event.clear()

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

    async def _read(self, conn: AbstractConnection, commander: asyncio.Task[None]) -> None:
        pinged = False
        while not self._closing:
            reply = await conn.read_response(timeout=self.health_interval)
            if commander.done():
                commander.result()  # a failed write: raise its error here
            if reply is None:  # silent for health_interval
                if pinged:
                    raise TimeoutError(f"no answer to PING within {self.health_interval}s")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if not isinstance(reply, list) or not reply:
                continue  # PONG outside subscribed mode
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self._on_message(reply[1], reply[2])
            elif kind == b"subscribe":
                self._on_subscribed(reply[1])

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

    # -- publishing -----------------------------------------------------------------

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
            answered = 0
            try:
                for c in range(0, len(commands), _CHUNK):
                    chunk = commands[c : c + _CHUNK]
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
                # Unknown whether the unanswered frames went out: room frames are sent
                # again (at-least-once, in the order published), node payloads not
                # (at-most-once).
                unanswered = sorted(i for _, _, ix in commands[answered:] for i in ix)
                again = [items[i] for i in unanswered if items[i].lost is None]
                self.dropped += len(unanswered) - len(again)
                self._queue.extendleft(reversed(again))
                self._queue_bytes += sum(it.size for it in again)
                self._trim()
                if self._closing:
                    break
        if conn is not None:
            await conn.disconnect(nowait=True)

    # -- introspection for tests ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "bad_frames": self.bad_frames,
            "reconnects": self.reconnects,
            "node_sent": self.node_sent,
            "node_received": self.node_received,
            "node_lost": self.node_lost,
            "batches": self.batches,
            "batched": self.batched,
            "backlog": len(self._queue),
            "subscribed": len(self._counts),
        }
