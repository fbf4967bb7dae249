"""The Redis presence manager.

Keys (``P`` is the broker's prefix, ``R`` the room; every room key carries the
``{R}`` hash tag, as the room's channel does):

* ``P presence:{R}:m``: hash member id -> ``{"n": nick, "u": user, "o": node, "k": key}``
* ``P presence:{R}:k``: hash nickname key -> owner (the atomic claim)
* ``P presence:{R}:c``: hash nickname key -> how many members hold it (one user
  on two nodes holds its nickname twice)
* ``P presence:{R}:v``: the room's version, bumped by every change
* ``P presence:{R}:n:<node>``: set of the node's member ids in the room
* ``P presence:node:<node>``: the node's lease (expires after ``lease_ttl``)
* ``P presence:node:<node>:rooms``: set of rooms the node has members in
* ``P presence:nodes``: set of nodes; ``P presence:reap:<node>``: reaper's lock

Every change is one Lua script, which also PUBLISHes the change on the room's
broker channel (:mod:`hubbub.broker.redis` framing, with the origin node):
Redis runs scripts one at a time and delivers a channel's messages in
PUBLISH order, so every node receives a room's events in version order. A
reaped node's members are published as coming from the dead node itself, so
every living node (the reaper too) hears them. The scripts touching a room's
keys and a node key assume one Redis primary (not Redis Cluster).

Operations are queued and run one at a time, in call order, on one
connection (a leave never overtakes the join before it). Bounds: a snapshot
reads at most ``max_members`` entries of a room (HSCAN pages of 1000); the
reaper reads at most ``max_nodes`` nodes per pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..broker.redis import encode_frame
from .base import Entry, Listener, PresenceError, event_head, join_head, leave_head

log = logging.getLogger("hubbub.presence")

_RELEASE = """
local function release(c, k, key)
  if redis.call('HINCRBY', c, key, -1) <= 0 then
    redis.call('HDEL', c, key)
    redis.call('HDEL', k, key)
  end
end
"""

# KEYS: m k c v n rooms; ARGV: mid key owner value channel head room
JOIN = (
    _RELEASE
    + """
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= ARGV[3] then return -1 end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local was = cjson.decode(old)
  if was['k'] == ARGV[2] and old == ARGV[4] then
    return tonumber(redis.call('GET', KEYS[4]) or '0')
  end
  if was['k'] ~= ARGV[2] then
    release(KEYS[3], KEYS[2], was['k'])
    old = nil
  end
end
if not old then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[7])
local ver = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ver .. '}')
return ver
"""
)

# KEYS: m k c v n rooms; ARGV: mid channel head room
LEAVE = (
    _RELEASE
    + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
release(KEYS[3], KEYS[2], cjson.decode(old)['k'])
redis.call('SREM', KEYS[5], ARGV[1])
if redis.call('SCARD', KEYS[5]) == 0 then redis.call('SREM', KEYS[6], ARGV[4]) end
local ver = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. ver .. '}')
return ver
"""
)

# KEYS: m k c v n lease; ARGV: channel head.  -1: the node is alive (again).
REAP = (
    _RELEASE
    + """
if redis.call('EXISTS', KEYS[6]) == 1 then return -1 end
local ids = redis.call('SMEMBERS', KEYS[5])
if #ids == 0 then return 0 end
for _, id in ipairs(ids) do
  local old = redis.call('HGET', KEYS[1], id)
  if old then
    redis.call('HDEL', KEYS[1], id)
    release(KEYS[3], KEYS[2], cjson.decode(old)['k'])
  end
end
redis.call('DEL', KEYS[5])
local ver = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. cjson.encode(ids) .. ',"v":' .. ver .. '}')
return ver
"""
)

# KEYS: nodes rooms lease; ARGV: node
FORGET = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

_value = msgspec.json.Decoder(dict[str, Any])


class RedisPresence:
    """``RedisPresence(url, prefix=..., node_id=..., channel=...)``: ``channel(room)``
    is the broker's channel of a room (events travel with the room's frames)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        node_id: str,
        channel: Callable[[str], bytes],
        lease_ttl: float = 10.0,
        renew_every: float = 3.0,
        io_timeout: float = 5.0,
        max_members: int = 10_000,
        max_nodes: int = 1000,
        max_queue: int = 100_000,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.node = node_id
        self.channel = channel
        self.lease_ttl = lease_ttl
        self.renew_every = renew_every
        self.max_members = max_members
        self.max_nodes = max_nodes
        self.max_queue = max_queue
        self.io_timeout = io_timeout
        self._redis: Redis | None = None
        self._token = secrets.token_hex(8)
        self._queue: deque[tuple[Callable[[], Coroutine[Any, Any, Any]], asyncio.Future[Any]]]
        self._queue = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}

    # -- keys ----------------------------------------------------------------------

    def _room_keys(self, room: str, node: str) -> list[str]:
        base = f"{self.prefix}presence:{{{room}}}"
        return [f"{base}:m", f"{base}:k", f"{base}:c", f"{base}:v", f"{base}:n:{node}"]

    def _node_key(self, node: str, what: str = "") -> str:
        return f"{self.prefix}presence:node:{node}{what}"

    @property
    def _nodes_key(self) -> str:
        return f"{self.prefix}presence:nodes"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: Listener | None) -> None:
        """Take the lease (events come through the broker: ``listener`` unused)."""
        self._redis = Redis.from_url(
            self.url, socket_timeout=self.io_timeout, socket_connect_timeout=self.io_timeout
        )
        for name, text in (("join", JOIN), ("leave", LEAVE), ("reap", REAP), ("forget", FORGET)):
            self._scripts[name] = self._redis.register_script(text)
        try:
            await self._take_lease()
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            raise PresenceError(f"cannot reach Redis for presence: {exc}") from exc
        self._worker = asyncio.create_task(self._work(), name="hubbub-presence")

    async def _take_lease(self) -> None:
        assert self._redis is not None
        ms = int(self.lease_ttl * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._node_key(self.node), self._token, px=ms)
            pipe.sadd(self._nodes_key, self.node)
            await pipe.execute()

    async def close(self, retire: bool = True) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            # Bounded: a redis-py call cut off mid-reconnect may take its time to end.
            await asyncio.wait({worker}, timeout=min(1.0, self.io_timeout))
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(PresenceError("presence closed"))
        self._queue.clear()
        if self._redis is None:
            return
        if retire:
            try:
                await asyncio.wait_for(self._retire(), self.io_timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("could not remove this node's members from presence: %s", exc)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._redis.aclose(), self.io_timeout)
        self._redis = None

    async def _retire(self) -> None:
        assert self._redis is not None
        await self._redis.delete(self._node_key(self.node))
        await self._reap_node(self.node, origin=self.node)

    # -- the queue -------------------------------------------------------------------

    def _submit(self, op: Callable[[], Coroutine[Any, Any, Any]]) -> Awaitable[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._worker is None or len(self._queue) >= self.max_queue:
            fut.set_exception(PresenceError("presence is not running or is too far behind"))
            return fut
        self._queue.append((op, fut))
        self._wake.set()
        return fut

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            op, fut = self._queue.popleft()
            if fut.done():
                continue
            try:
                result = await op()
            except (RedisError, OSError, TimeoutError) as exc:
                if not fut.done():
                    fut.set_exception(PresenceError(str(exc) or type(exc).__name__))
            except Exception as exc:  # a bug: the caller logs it
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)

    # -- operations ------------------------------------------------------------------

    def join(self, room: str, entry: Entry) -> Awaitable[int | None]:
        return self._submit(lambda: self._join(room, entry))

    async def _join(self, room: str, e: Entry) -> int | None:
        value = msgspec.json.encode({"n": e.nick, "u": e.user, "o": e.node, "k": e.key})
        head = encode_frame(self.node.encode(), join_head([e]), None)
        keys = [*self._room_keys(room, self.node), self._node_key(self.node, ":rooms")]
        ver = await self._scripts["join"](
            keys=keys, args=[e.mid, e.key, e.owner, value, self.channel(room), head, room]
        )
        return None if int(ver) < 0 else int(ver)

    def leave(self, room: str, mid: str) -> Awaitable[int]:
        return self._submit(lambda: self._leave(room, mid))

    async def _leave(self, room: str, mid: str) -> int:
        head = encode_frame(self.node.encode(), leave_head([mid]), None)
        keys = [*self._room_keys(room, self.node), self._node_key(self.node, ":rooms")]
        args = [mid, self.channel(room), head, room]
        return int(await self._scripts["leave"](keys=keys, args=args))

    def snapshot(self, room: str) -> Awaitable[tuple[int, list[Entry]]]:
        return self._submit(lambda: self._snapshot(room))

    async def _snapshot(self, room: str) -> tuple[int, list[Entry]]:
        """The version, then the members (HSCAN pages). Changes during the scan
        are in the version's events too: a node applies events above the version
        it read first, so it converges on the final list."""
        assert self._redis is not None
        m, _k, _c, v, _n = self._room_keys(room, self.node)
        version = int(await self._redis.get(v) or 0)
        entries: list[Entry] = []
        async for mid, raw in self._redis.hscan_iter(m, count=1000):
            if len(entries) >= self.max_members:
                log.warning("room %s: more than %d members in presence", room, self.max_members)
                break
            try:
                d = _value.decode(raw)
                entries.append(Entry(mid.decode(), d["n"], d.get("u"), d["o"], d["k"], ""))
            except (msgspec.DecodeError, KeyError, UnicodeDecodeError):
                continue
        return version, entries

    def versions(self, rooms: list[str]) -> Awaitable[dict[str, int]]:
        return self._submit(lambda: self._versions(rooms))

    async def _versions(self, rooms: list[str]) -> dict[str, int]:
        assert self._redis is not None
        if not rooms:
            return {}
        values = await self._redis.mget([self._room_keys(r, self.node)[3] for r in rooms])
        return {r: int(x or 0) for r, x in zip(rooms, values, strict=True)}

    def renew(self) -> Awaitable[bool]:
        return self._submit(self._renew)

    async def _renew(self) -> bool:
        assert self._redis is not None
        ms = int(self.lease_ttl * 1000)
        kept = await self._redis.set(self._node_key(self.node), self._token, px=ms, xx=True)
        if kept:
            return True
        await self._take_lease()
        return False

    def reap(self) -> Awaitable[list[str]]:
        return self._submit(self._reap)

    async def _reap(self) -> list[str]:
        assert self._redis is not None
        nodes = []
        async for raw in self._redis.sscan_iter(self._nodes_key, count=100):
            node = raw.decode()
            if node != self.node:
                nodes.append(node)
            if len(nodes) >= self.max_nodes:
                break
        if not nodes:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(self._node_key(node))
            found = await pipe.execute()
        reaped = []
        for node, exists in zip(nodes, found, strict=True):
            if exists:
                continue
            lock = f"{self.prefix}presence:reap:{node}"
            ms = int(max(self.lease_ttl, self.io_timeout) * 1000)
            if not await self._redis.set(lock, self.node, px=ms, nx=True):
                continue  # another node is on it
            await self._reap_node(node, origin=node)
            reaped.append(node)
        return reaped

    async def _reap_node(self, node: str, origin: str) -> None:
        assert self._redis is not None
        rooms_key = self._node_key(node, ":rooms")
        lease = self._node_key(node)
        head = encode_frame(origin.encode(), event_head("leave"), None)
        async for raw in self._redis.sscan_iter(rooms_key, count=500):
            room = raw.decode()
            keys = [*self._room_keys(room, node), lease]
            if int(await self._scripts["reap"](keys=keys, args=[self.channel(room), head])) < 0:
                return  # the node took its lease again
        await self._scripts["forget"](keys=[self._nodes_key, rooms_key, lease], args=[node])
