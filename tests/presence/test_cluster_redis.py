"""ClusterPresence on the real Redis (own prefix per test): a join that changes
nothing in Redis (the member was registered already) reads the room's version,
and that reading is compared like the periodic version check's, so an event of
another node lost on the way here is still noticed; a join whose answer was lost
(Redis applied it) is taken back once Redis answers again, so no other node keeps
listing a member this node refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from hubbub import protocol as p
from hubbub.broker.redis import decode_frame
from hubbub.core import ChatCore, ChatLimits, Effect
from hubbub.core.nicknames import nick_key
from hubbub.presence import ClusterPresence
from hubbub.presence.base import Entry, PresenceError, decode_event
from hubbub.presence.redis import RedisPresence
from tests.broker.proxy import Link, Proxy
from tests.services import REDIS_URL, redis_client, redis_prefix  # noqa: F401

WALL = 1_700_000_000.0
ROOM = "r"


def channel(prefix: str) -> Callable[[str], bytes]:
    return lambda room: f"{prefix}{{{room}}}".encode()


class Relay:
    """Node A's broker, reduced to its presence events: every event of another node
    on the room's channel goes to ``to`` unless ``drop`` is set (a lost event)."""

    def __init__(self, prefix: str, node: str, to: Callable[[str, bytes], None]) -> None:
        self.channel = f"{prefix}{{{ROOM}}}"
        self.node, self.to = node, to
        self.drop = False
        self.heard: list[int] = []  # versions that came by, dropped or not
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Relay:
        self.client = aioredis.from_url(REDIS_URL)
        self.pubsub = self.client.pubsub()
        await self.pubsub.subscribe(self.channel)
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pubsub.aclose()
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is None:
                continue
            origin, payload, _ = decode_frame(msg["data"])
            event = decode_event(ROOM, payload)
            assert event is not None, payload
            self.heard.append(event.version)
            if origin.decode() != self.node and not self.drop:
                self.to(ROOM, payload)


async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


class NodeA:
    """A node without sockets on the real Redis: a core and its ClusterPresence."""

    def __init__(self, prefix: str, url: str = REDIS_URL, io_timeout: float = 5.0) -> None:
        self.core = ChatCore(
            ChatLimits(rate=0, room_create_rate=0), wallclock=lambda: WALL, coalesce_presence=True
        )
        self.tasks: set[asyncio.Task[Any]] = set()
        self.manager = RedisPresence(
            url, prefix=prefix, node_id="A", channel=channel(prefix), io_timeout=io_timeout
        )
        self.presence = ClusterPresence(
            self.core, self.manager, self.run, self.spawn, lambda fd, room: None
        )

    def run(self, effects: list[Effect]) -> None:
        self.core.flush_presence()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def join(self, fd: int, nick: str) -> None:
        self.core.connect(fd)
        self.core.handle(fd, p.Join(ROOM, nick=nick))
        await self.presence.follow(ROOM)
        assert await self.presence.claim(fd, ROOM)

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))


def entry(node: str, local: str, nick: str) -> Entry:
    mid = f"{node}/{local}"
    return Entry(mid, nick, None, node, nick_key(nick), f"c:{mid}")


@pytest.fixture
async def cluster(
    redis_prefix: str,  # noqa: F811
) -> AsyncIterator[tuple[NodeA, RedisPresence, Relay]]:
    redis_client().close()  # fails the test with how to start Redis if it is down
    a = NodeA(redis_prefix)
    b = RedisPresence(REDIS_URL, prefix=redis_prefix, node_id="B", channel=channel(redis_prefix))
    await a.presence.start()
    await b.start(None)
    try:
        async with Relay(redis_prefix, "A", a.presence.on_payload) as relay:
            yield a, b, relay
    finally:
        await a.settle()
        await a.manager.close(retire=False)
        await b.close(retire=False)


@pytest.fixture
async def one_lost(cluster: tuple[NodeA, RedisPresence, Relay]) -> NodeA:
    """Node A following the room with ann (version 1) and bob of B (2); B's cat (3)
    was lost on the way to A."""
    a, b, relay = cluster
    await a.join(1, "ann")
    assert await b.join(ROOM, entry("B", "c:1", "bob")) == 2
    await until(lambda: a.core.members(ROOM) == ["ann", "bob"], "A hears bob")
    relay.drop = True
    assert await b.join(ROOM, entry("B", "c:2", "cat")) == 3
    await until(lambda: 3 in relay.heard, "cat's event went by A")
    relay.drop = False
    return a


async def caught(a: NodeA) -> None:
    """Two version checks (the first may see an event in flight), then A has cat."""
    for _ in range(2):
        await a.presence.tick()
    await a.settle()
    await until(lambda: a.core.members(ROOM) == ["ann", "bob", "cat"], "A reads the room again")


@contextlib.contextmanager
def failing(manager: RedisPresence, method: str) -> Iterator[None]:
    """Within the block, every call of ``manager.<method>`` fails (a Redis hiccup)."""

    async def fails(*args: Any) -> Any:
        raise PresenceError("a Redis hiccup")

    real = getattr(manager, method)
    setattr(manager, method, fails)
    try:
        yield
    finally:
        setattr(manager, method, real)


async def test_a_lost_event_is_noticed_after_a_registration_that_changed_nothing(
    one_lost: NodeA,
) -> None:
    a = one_lost
    with failing(a.manager, "renew"):
        await a.presence.tick()  # fails: A registers its members again at the next tick
    # A's lease was kept: ann is registered again without a change in Redis; the
    # answer is the room's version (3), cat's, which A never heard.
    await caught(a)


async def test_a_lost_event_is_noticed_after_a_rejoin_that_changed_nothing(
    one_lost: NodeA,
) -> None:
    a = one_lost
    with failing(a.manager, "leave"):
        a.core.handle(1, p.Leave(ROOM))
        a.presence.release(1, ROOM)  # the leave does not reach Redis: ann is still there
        await a.settle()
    await a.join(1, "ann")  # back before the leave was sent again: nothing changes
    await caught(a)


class Deaf(Proxy):
    """A proxy to Redis that, while ``deaf`` is set, forwards the commands but drops
    Redis's replies: a command applied whose answer never comes (a timeout)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.deaf = False

    async def _forward(self, data: bytes, link: Link, upstream: bool) -> bool:
        if self.deaf and not upstream:
            return False  # a reply lost on the way back
        return await super()._forward(data, link, upstream)


async def test_a_join_applied_but_not_answered_is_taken_back_once_redis_answers(
    redis_prefix: str,  # noqa: F811
) -> None:
    redis_client().close()
    target = urlparse(REDIS_URL)
    proxy = Deaf(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    # The join's reply must time out, but connecting through the proxy on a loaded machine
    # must not: 2 s (0.3 s failed CI's start-up with the other core busy).
    a = NodeA(redis_prefix, f"redis://127.0.0.1:{proxy.port}{target.path}", io_timeout=2.0)
    b = RedisPresence(REDIS_URL, prefix=redis_prefix, node_id="B", channel=channel(redis_prefix))
    await a.presence.start()
    await b.start(None)

    async def listed() -> list[str]:
        return sorted(e.nick for e in (await b.snapshot(ROOM))[1])

    try:
        a.core.connect(1)
        a.core.handle(1, p.Join(ROOM, nick="ann"))
        await a.presence.follow(ROOM)
        proxy.deaf = True
        with pytest.raises(PresenceError):
            await a.presence.claim(1, ROOM)  # the join is refused (unavailable) ...
        a.core.handle(1, p.Leave(ROOM))  # ... and undone here
        assert await listed() == ["ann"]  # but Redis applied it: B lists her
        proxy.deaf = False
        await a.presence.tick()  # Redis answers again: A takes her out
        await a.settle()
        assert await listed() == []
        assert not a.presence._unsent_leaves
    finally:
        await a.settle()
        await a.manager.close(retire=False)
        await b.close(retire=False)
        await proxy.close()
