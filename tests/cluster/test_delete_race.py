"""A room deleted on node A while node B, which has not heard of it yet, sends to it
or takes a join for it (hubbub.apps.cluster_control, *A delete racing a send*).

B's Redis subscriber connection goes through a proxy that holds what Redis sends it
(in order, nothing lost): B hears A's ``deleted`` control frame (and A's presence
events) only when the test lets it, while its store and its own commands are not
delayed. So the order that a distant Redis makes likely is made certain."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

from hubbub import Server
from tests.apps.test_chat import Client, http
from tests.broker.proxy import Link, Proxy
from tests.services import REDIS_URL

from .conftest import Cluster, wait_until
from .test_cross_node import KEY, Frames, listed, member


class HoldProxy(Proxy):
    """A Redis proxy that holds, while ``gate`` is clear, what Redis sends to a node's
    subscriber connection (the one named ``hubbub-<node>-sub``)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.gate = asyncio.Event()
        self.gate.set()

    async def _forward(self, data: bytes, link: Link, upstream: bool) -> bool:
        if upstream and b"-sub\r\n" in data:
            link.marked = True  # CLIENT SETNAME hubbub-<node>-sub
        if not upstream and link.marked:
            await self.gate.wait()
        return await super()._forward(data, link, upstream)


async def two_nodes(cluster: Cluster) -> tuple[Server, Server, HoldProxy]:
    target = urlparse(REDIS_URL)
    proxy = HoldProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    cluster.proxies.append(proxy)
    a = await cluster.node(api_key=KEY)
    b = await cluster.node(via_proxy=proxy, api_key=KEY)
    return a, b, proxy


async def delete_unheard(a: Server, proxy: HoldProxy, ann: Frames) -> None:
    """A deletes the room; B does not hear it until ``proxy.gate`` is set."""
    proxy.gate.clear()
    status, body = await http(a, "DELETE", "/api/rooms/r", key=KEY)
    assert status == 200 and body == {"deleted": "r", "members_removed": 1}
    await ann.wait("left_room", room="r", reason="deleted")


async def test_a_send_after_a_delete_makes_a_new_room_and_the_old_members_leave(
    cluster: Cluster,
) -> None:
    a, b, proxy = await two_nodes(cluster)
    ann, bob, cat = await member(a, "ann"), await member(b, "bob"), await member(b, "cat")
    await listed([a, b], ["ann", "bob", "cat"])
    await bob.client.send(type="send", room="r", id="m1", text="before")
    (old,) = await ann.wait("message")
    await delete_unheard(a, proxy, ann)
    await bob.client.send(type="send", room="r", id="m2", text="after")
    (ack,) = await bob.wait("ack", id="m2")
    assert ack["epoch"] != old["epoch"] and ack["seq"] == 1  # a new room in the store
    # B sees a message of another epoch, reads the store: a new epoch (a reset, as
    # far as the store can tell). Then A's "deleted" comes: B's members leave too.
    for f in (bob, cat):
        (reset,) = await f.wait("reset", room="r")
        assert reset["epoch"] == ack["epoch"]
    dan = await member(b, "dan")  # joins the new room on B before B hears of the delete
    proxy.gate.set()
    for f in (bob, cat):
        await f.wait("left_room", room="r", reason="deleted")
    await wait_until(lambda: b.app.core.members("r") == ["dan"], what="dan alone on B")
    assert "r" not in a.app.core.rooms
    assert dan.of("left_room") == []
    # The message is not lost: the new room's first, as its ack said.
    (stored,) = await b.app.store.since("r", 0, 10)
    assert (stored.client_id, stored.seq, stored.epoch) == ("m2", 1, ack["epoch"])
    for f in (ann, bob, cat, dan):
        await f.close()


async def test_when_every_member_was_in_the_deleted_room_it_is_forgotten(
    cluster: Cluster,
) -> None:
    a, b, proxy = await two_nodes(cluster)
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    await delete_unheard(a, proxy, ann)
    await bob.client.send(type="send", room="r", id="m2", text="after")
    (ack,) = await bob.wait("ack", id="m2")
    await bob.wait("reset", room="r")
    proxy.gate.set()
    await bob.wait("left_room", room="r", reason="deleted")
    await wait_until(lambda: "r" not in b.app.core.rooms and "r" not in b.app.broker.subscribed)
    assert b.app.sequencer.cursor("r") is None
    # Joining again: the new room, with the message sent in the race.
    await bob.client.send(type="join", room="r", nick="bob")
    (state,) = await bob.wait("room")
    assert (state["epoch"], state["seq"]) == (ack["epoch"], 1)
    for f in (ann, bob):
        await f.close()


async def test_a_join_on_another_node_right_after_a_delete_is_told_deleted_and_rejoins(
    cluster: Cluster,
) -> None:
    """Documents the intended behaviour (no change): B answers the join from the store
    (the new room) while it still follows the old epoch; A's delete then takes the
    joiner out with the others. It joins again, into the new room."""
    a, b, proxy = await two_nodes(cluster)
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    await bob.client.send(type="send", room="r", id="m1", text="before")
    (old,) = await ann.wait("message")
    await delete_unheard(a, proxy, ann)
    carl = Frames(await Client.open(b))
    await carl.client.send(type="join", room="r", nick="carl")
    (state,) = await carl.wait("room")
    assert state["epoch"] != old["epoch"] and state["seq"] == 0
    proxy.gate.set()
    for f in (bob, carl):
        await f.wait("left_room", room="r", reason="deleted")
    await wait_until(lambda: "r" not in b.app.core.rooms)
    await carl.client.send(type="join", room="r", nick="carl")
    again = (await carl.wait("room", 2))[1]
    assert again["epoch"] == state["epoch"] and again["members"] == ["carl"]
    for f in (ann, bob, carl):
        await f.close()
