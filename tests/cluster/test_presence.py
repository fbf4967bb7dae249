"""Presence across in-process nodes on the real Redis and PostgreSQL: member lists,
nickname claims, and a dead node's members removed when its lease lapses."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from hubbub import Server
from hubbub.apps.chat import create_app
from hubbub.broker.redis import RedisBroker
from hubbub.config import Settings
from hubbub.presence.redis import RedisPresence
from tests.apps.test_chat import Client
from tests.services import PG_DSN, REDIS_URL, postgres_store

from ..conftest import free_port
from .conftest import Cluster
from .drill import Node

#: Short leases so that a death is noticed in a second or two (defaults: 10 s / 3 s).
LEASE_TTL = 1.5
RENEW_EVERY = 0.3


async def node(cluster: Cluster, name: str) -> Server:
    broker = RedisBroker(REDIS_URL, prefix=cluster.prefix, node_id=name, backoff_max=0.2)
    presence = RedisPresence(
        REDIS_URL,
        prefix=cluster.prefix,
        node_id=name,
        channel=broker.channel,
        lease_ttl=LEASE_TTL,
        renew_every=RENEW_EVERY,
    )
    server = create_app(
        "127.0.0.1",
        0,
        Settings(rate=0, db=":memory:"),
        store=postgres_store(cluster.schema),
        broker=broker,
        presence=presence,
    )
    await server.listen()
    cluster.nodes.append(server)
    return server


class Roster:
    """A client's view of a room's member list, kept from the frames it receives."""

    def __init__(self, client: Client, room: str, state: dict[str, Any]) -> None:
        self.client = client
        self.room = room
        self.members = set(state["members"])
        self.count = state.get("count")
        self.frames: list[dict[str, Any]] = []

    def apply(self, f: dict[str, Any]) -> None:
        if f.get("room") != self.room:
            return
        kind = f["type"]
        if kind in ("joined", "left", "renamed", "presence"):
            self.frames.append(f)
        if kind == "joined":
            self.members.add(f["nick"])
        elif kind == "left":
            self.members.discard(f["nick"])
        elif kind == "renamed":
            self.members.discard(f["old"])
            self.members.add(f["nick"])
        elif kind == "presence":
            for p in f["left"]:
                self.members.discard(p["nick"])
            for r in f["renamed"]:
                self.members.discard(r["old"])
            for r in f["renamed"]:
                self.members.add(r["nick"])
            for p in f["joined"]:
                self.members.add(p["nick"])
            self.count = f["count"]

    async def until(self, members: set[str], within: float = 10.0) -> float:
        """Read frames until the list is ``members``; the seconds it took."""
        start = time.monotonic()
        deadline = start + within
        while self.members != members:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.members} is not {members} within {within}s")
            try:
                self.apply(await self.client.recv(within=left))
            except TimeoutError:
                continue
        return time.monotonic() - start


async def next_of(client: Client, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next frame of type ``kind`` (others skipped)."""
    deadline = time.monotonic() + within
    while True:
        frame = await client.recv(within=max(0.05, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


async def joined(server: Server, nick: str, room: str) -> tuple[Client, Roster]:
    return await joined_url(server, nick, room)


async def joined_url(server: Any, nick: str, room: str) -> tuple[Client, Roster]:
    client = await Client.open(server)
    await client.send(type="join", room=room, nick=nick)
    state = await client.expect("room", room=room)
    return client, Roster(client, room, state)


async def test_members_of_every_node_are_in_the_room_frame_and_who(cluster: Cluster) -> None:
    a, b = await node(cluster, "A"), await node(cluster, "B")
    ann, ann_view = await joined(a, "ann", "r")
    bob, bob_view = await joined(b, "bob", "r")
    assert bob_view.members == {"ann", "bob"} and bob_view.count == 2
    await ann_view.until({"ann", "bob"})  # ann hears bob, who is on the other node
    await bob.send(type="who", room="r")
    page = await bob.expect("members", room="r")
    assert page["members"] == ["ann", "bob"] and page["count"] == 2
    await bob.send(type="leave", room="r")
    await ann_view.until({"ann"})
    for c in (ann, bob):
        await c.close()


async def test_a_nickname_taken_on_one_node_is_refused_on_the_other(cluster: Cluster) -> None:
    a, b = await node(cluster, "A"), await node(cluster, "B")
    ann, _ = await joined(a, "ann", "r")
    other = await Client.open(b)
    await other.send(type="join", room="r", nick="ANN")  # the same nickname, case aside
    refused = await other.expect("error", code="nick_taken", room="r")
    assert "ann" in refused["message"].lower()
    # Racing: both nodes see an empty room, one of the two claims wins.
    x, y = await Client.open(a), await Client.open(b)
    await asyncio.gather(
        x.send(type="join", room="race", nick="zed"), y.send(type="join", room="race", nick="zed")
    )
    got = [await x.recv(), await y.recv()]
    kinds = sorted(f["type"] for f in got)
    assert kinds == ["error", "room"], got
    assert next(f for f in got if f["type"] == "error")["code"] == "nick_taken"
    for c in (ann, other, x, y):
        await c.close()


async def test_a_renamed_member_is_renamed_everywhere_and_a_taken_name_refused(
    cluster: Cluster,
) -> None:
    a, b = await node(cluster, "A"), await node(cluster, "B")
    ann, ann_view = await joined(a, "ann", "r")
    bob, _bob_view = await joined(b, "bob", "r")
    await ann_view.until({"ann", "bob"})
    await bob.send(type="nick", nick="robert")
    await ann_view.until({"ann", "robert"})
    await bob.send(type="nick", nick="ann")  # ann's, on the other node: refused by the mirror
    refused = await next_of(bob, "error")
    assert refused["code"] == "nick_taken" and refused["ref"] == "nick"
    for c in (ann, bob):
        await c.close()


async def test_a_dead_nodes_members_leave_every_list_when_its_lease_lapses(
    cluster: Cluster,
) -> None:
    a, b = await node(cluster, "A"), await node(cluster, "B")
    ann, _ = await joined(a, "ann", "r")
    cat, _ = await joined(a, "cat", "r")
    bob, bob_view = await joined(b, "bob", "r")
    assert bob_view.members == {"ann", "bob", "cat"}
    # A dies without goodbyes: no lease renewal, no broker, no leave.
    assert a.app.cluster is not None
    await a.app.cluster.halt()
    await a.app.broker.close()
    took = await bob_view.until({"bob"}, within=LEASE_TTL + 4 * RENEW_EVERY + 3)
    assert took <= LEASE_TTL + 2 * RENEW_EVERY + 1.0, took
    assert bob_view.count in (None, 1)  # a presence frame's count, if one was sent
    # No ghost: a new joiner on B sees only bob, and A's names are free again.
    dan, dan_view = await joined(b, "ann", "r")
    assert dan_view.members == {"ann", "bob"} and dan_view.count == 2
    await bob.send(type="who", room="r")
    page = await next_of(bob, "members")
    assert page["members"] == ["ann", "bob"] and page["count"] == 2
    for c in (ann, cat, bob, dan):
        await c.close()


async def test_a_paused_serve_node_loses_its_lease_and_recovers(
    spawn: Any, pg_schema: str, redis_prefix: str
) -> None:
    """Two ``hubbub serve`` processes; one is SIGSTOPped past its lease (default 10 s,
    renewed every 3 s): the other node's clients see its members leave within 15 s.
    After SIGCONT it registers them again: every list converges, its clients go on."""
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    a = await asyncio.to_thread(Node, spawn, free_port(), store, broker)
    b = await asyncio.to_thread(Node, spawn, free_port(), store, broker)
    url_a, url_b = f"ws://127.0.0.1:{a.port}/", f"ws://127.0.0.1:{b.port}/"
    ann = await Client.open(url_a)
    await ann.send(type="join", room="r", nick="ann")
    ann_view = Roster(ann, "r", await next_of(ann, "room"))
    bob, bob_view = await joined_url(url_b, "bob", "r")
    assert bob_view.members == {"ann", "bob"}
    await ann_view.until({"ann", "bob"})
    a.proc.send_signal(signal.SIGSTOP)
    try:
        took = await bob_view.until({"bob"}, within=20)
        assert took <= 15.0, took
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # Back: A registers ann again; bob sees her, and a newcomer on B lists her.
    await bob_view.until({"ann", "bob"}, within=15)
    cat, cat_view = await joined_url(url_b, "cat", "r")
    assert cat_view.members == {"ann", "bob", "cat"}
    # ann's connection lived through the pause (or she comes back on A): her list
    # converges and what she says reaches B.
    try:
        await ann_view.until({"ann", "bob", "cat"}, within=10)
    except ConnectionClosed:
        ann, ann_view = await joined_url(url_a, "ann", "r")
        await ann_view.until({"ann", "bob", "cat"}, within=10)
    await ann.send(type="send", room="r", id="after", text="back")
    got = await next_of(bob, "message", within=10)
    assert got["text"] == "back"
    for c in (ann, bob, cat):
        await c.close()
    a.stop(signal.SIGTERM)
    b.stop(signal.SIGTERM)


async def test_default_nicknames_do_not_clash_across_nodes(cluster: Cluster) -> None:
    a, b = await node(cluster, "A"), await node(cluster, "B")
    x, y = await Client.open(a), await Client.open(b)
    assert x.fd == y.fd == 1  # fds repeat from node to node
    await x.send(type="join", room="r")
    await y.send(type="join", room="r")
    rx, ry = await next_of(x, "room"), await next_of(y, "room")
    assert (rx["nick"], ry["nick"]) == ("user-1.A", "user-1.B")
    await Roster(x, "r", rx).until({"user-1.A", "user-1.B"})
    for c in (x, y):
        await c.close()
