"""The Redis presence manager on the machine's real Redis (own prefix per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from hubbub.broker.redis import decode_frame
from hubbub.core.nicknames import nick_key
from hubbub.presence.base import Entry, Event, decode_event
from hubbub.presence.redis import RedisPresence
from tests.services import REDIS_URL, redis_client, redis_prefix  # noqa: F401


def entry(node: str, local: str, nick: str, user: str | None = None) -> Entry:
    mid = f"{node}/{local}"
    owner = f"u:{user}" if user else f"c:{mid}"
    return Entry(mid, nick, user, node, nick_key(nick), owner)


class Node:
    def __init__(self, prefix: str, name: str, ttl: float = 10.0) -> None:
        self.manager = RedisPresence(
            REDIS_URL, prefix=prefix, node_id=name, channel=lambda r: f"{prefix}{{{r}}}".encode(),
            lease_ttl=ttl,
        )  # fmt: skip


class Events:
    """What is published on a room's channel: (origin node, event)."""

    def __init__(self, prefix: str, room: str) -> None:
        self.channel = f"{prefix}{{{room}}}"
        self.room = room
        self.got: list[tuple[str, Event]] = []

    async def __aenter__(self) -> Events:
        self.client = aioredis.from_url(REDIS_URL)
        self.pubsub = self.client.pubsub()
        await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()

    async def next(self, within: float = 5.0) -> tuple[str, Event]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None:
                origin, payload, seq = decode_frame(msg["data"])
                event = decode_event(self.room, payload)
                assert seq is None and event is not None, payload
                return origin.decode(), event
        raise AssertionError(f"no event within {within}s")


@pytest.fixture
async def nodes(redis_prefix: str) -> AsyncIterator[tuple[str, RedisPresence, RedisPresence]]:  # noqa: F811
    redis_client().close()  # fails the test with how to start Redis if it is down
    a, b = Node(redis_prefix, "A").manager, Node(redis_prefix, "B").manager
    await a.start(None)
    await b.start(None)
    try:
        yield redis_prefix, a, b
    finally:
        await a.close(retire=False)
        await b.close(retire=False)


async def test_claims_are_atomic_per_room_and_told_in_version_order(nodes) -> None:
    prefix, a, b = nodes
    async with Events(prefix, "r") as events:
        assert await a.join("r", entry("A", "c:1", "ann")) == 1
        assert await b.join("r", entry("B", "c:1", "ANN")) is None  # taken (case aside)
        assert await b.join("r", entry("B", "c:1", "bob")) == 2
        assert await a.join("other", entry("A", "c:2", "bob")) == 1  # per room
        origin, first = await events.next()
        assert origin == "A" and first == Event("r", "join", 1, [("A/c:1", "ann", None)])
        origin, second = await events.next()
        assert origin == "B" and second.version == 2
        assert await a.join("r", entry("A", "c:1", "annie")) == 3  # a rename
        assert await b.join("r", entry("B", "c:9", "ann")) == 4  # ann is free again
        version, members = await b.snapshot("r")
        assert version == 4
        assert sorted((e.mid, e.nick) for e in members) == [
            ("A/c:1", "annie"), ("B/c:1", "bob"), ("B/c:9", "ann"),
        ]  # fmt: skip
        assert await a.leave("r", "A/c:1") == 5
        assert await a.leave("r", "A/c:1") == 0  # gone already: nothing told
        assert (await b.versions(["r", "other", "none"])) == {"r": 5, "other": 1, "none": 0}


async def test_one_user_on_two_nodes_holds_its_nickname_until_both_leave(nodes) -> None:
    _prefix, a, b = nodes
    assert await a.join("r", entry("A", "u:x", "xena", "x"))
    assert await b.join("r", entry("B", "u:x", "xena", "x"))  # the same owner
    await a.leave("r", "A/u:x")
    assert await a.join("r", entry("A", "c:5", "xena")) is None  # still B's
    await b.leave("r", "B/u:x")
    assert await a.join("r", entry("A", "c:5", "xena")) is not None


async def test_a_dead_nodes_members_are_reaped_once_and_told_as_from_it(redis_prefix) -> None:  # noqa: F811
    redis_client().close()
    dead = Node(redis_prefix, "D", ttl=0.3).manager
    b, c = Node(redis_prefix, "B").manager, Node(redis_prefix, "C").manager
    for m in (dead, b, c):
        await m.start(None)
    try:
        await dead.join("r", entry("D", "c:1", "dora"))
        await dead.join("s", entry("D", "c:2", "dan"))
        await b.join("r", entry("B", "c:1", "bob"))
        assert await b.reap() == []  # D is alive
        async with Events(redis_prefix, "r") as events:
            await dead.close(retire=False)  # silent: its lease lapses in 0.3 s
            deadline = time.monotonic() + 5
            reaped: list[str] = []
            while not reaped and time.monotonic() < deadline:
                reaped = await b.reap() + await c.reap()
                await asyncio.sleep(0.05)
            assert reaped == ["D"]  # one node did it
            origin, event = await events.next()
            assert origin == "D" and event.op == "leave" and event.ids == ["D/c:1"]
        assert [e.nick for e in (await c.snapshot("r"))[1]] == ["bob"]
        assert (await c.snapshot("s"))[1] == []
        assert await c.join("r", entry("C", "c:1", "dora")) is not None  # free again
        assert await b.reap() == [] and await c.reap() == []
    finally:
        await b.close(retire=False)
        await c.close(retire=False)


async def test_a_lapsed_lease_is_taken_again_and_a_clean_close_retires(redis_prefix) -> None:  # noqa: F811
    redis_client().close()
    a, b = Node(redis_prefix, "A", ttl=0.2).manager, Node(redis_prefix, "B").manager
    await a.start(None)
    await b.start(None)
    try:
        assert await a.renew() is True
        r = redis_client()
        deadline = time.monotonic() + 5
        while r.exists(f"{redis_prefix}presence:node:A"):  # a pause past the lease
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        r.close()
        assert await a.renew() is False  # lapsed, taken again
        assert await a.renew() is True
        await a.join("r", entry("A", "c:1", "ann"))
        await a.close()  # clean: members and lease gone at once
        assert (await b.snapshot("r"))[1] == []
        r = redis_client()
        try:
            assert not r.exists(f"{redis_prefix}presence:node:A")
            assert not r.sismember(f"{redis_prefix}presence:nodes", "A")
        finally:
            r.close()
    finally:
        await b.close(retire=False)
