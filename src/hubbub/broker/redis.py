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

* the **subscriber** (:mod:`hubbub.broker.redis_subscribe`) owns one connection:
  one task reads it, one writes the SUBSCRIBE/UNSUBSCRIBE commands that bring
  Redis in line with the wanted set, and one PINGs it when it has been silent for
  ``health_interval`` seconds and gives it up if nothing (the PONG or anything
  else) comes within as long again; the reader reads with no timeout, so a message
  costs no timer. After a loss it reconnects with exponential back-off (with
  jitter, up to ``backoff_max``), resubscribes every wanted room and, once Redis
  has confirmed them all, calls ``on_reconnect()``: frames published meanwhile
  were lost, so the app re-reads positions from the store.
* the **publisher** (:mod:`hubbub.broker.redis_publish`) owns another: one task
  sends the outgoing queue in order, pipelined (up to 256 ``PUBLISH`` per round
  trip, a round at most ``_ROUND_FRAMES`` frames and about ``_ROUND_BYTES``
  bytes), so one node's frames of one room reach Redis, and so every subscriber,
  in publication order. ``publish`` never blocks: it appends to a queue bounded in
  frames (``max_queue``) and bytes (``max_queue_bytes``). **When the queue is full
  the oldest frames are dropped** (counted in ``dropped``, logged once per
  outage): other nodes miss them and see a gap in ``seq``, which the app fills
  from the store. A round trip that fails is sent again after the reconnect, so
  another node may receive a frame twice (at-least-once; ``seq`` tells).

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
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import ConnectionPool

from .base import NODE_PAYLOAD_MAX, BrokerError, Deliver, NodeDeliver
from .frames import decode_frame, encode_frame, valid_node_id
from .redis_publish import _Outgoing, _Publisher
from .redis_subscribe import _IO_ERRORS

__all__ = ["RedisBroker", "decode_frame", "encode_frame"]

log = logging.getLogger("hubbub.broker.redis")

#: The wire versions a node may send (frames.py); it reads every one of them.
WIRE_VERSIONS = (1, 2)


def _take_wire(url: str) -> tuple[str, str | None]:
    """``url`` without its ``wire`` query parameter, and that parameter (None if absent)."""
    parts = urlsplit(url)
    if "wire=" not in parts.query:
        return url, None
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [v for k, v in query if k == "wire"]
    rest = [(k, v) for k, v in query if k != "wire"]
    return urlunsplit(parts._replace(query=urlencode(rest))), values[-1] if values else None


class RedisBroker(_Publisher):
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
        self._read_at = 0.0
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
