"""Across nodes (PostgreSQL + Redis, in-process nodes): direct messages reach members
connected to other nodes, and a room's delete or reset on one node reaches the
members of every node (hubbub.apps.cluster_control)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hubbub import Server
from tests.apps.test_chat import Client, http
from tests.auth.keys import SECRET, token

from ..conftest import ws_url
from .conftest import Cluster, wait_until

KEY = "k" * 20


class Frames:
    """Every frame a client receives, read in the background (nothing is skipped)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                self.frames.append(json.loads(await self.client.ws.recv()))

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if f["type"] == kind and all(f.get(k) == v for k, v in fields.items())
        ]

    async def wait(self, kind: str, count: int = 1, within: float = 10.0, **fields: Any) -> list:
        await wait_until(
            lambda: len(self.of(kind, **fields)) >= count,
            within,
            f"{count} {kind} {fields} (got {self.frames[-5:]})",
        )
        return self.of(kind, **fields)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.close()


async def member(server: Server, nick: str, room: str = "r") -> Frames:
    return Frames(await Client.open(server, nick, room))


async def user(server: Server, sub: str, room: str = "r") -> Frames:
    """A connection of user ``sub`` (a token), in ``room`` under its name."""
    headers = {"Authorization": f"Bearer {token(sub=sub, name=sub)}"}
    ws = await connect(ws_url(server), subprotocols=["hubbub.v1"], additional_headers=headers)
    client = Client(ws)
    welcome = await client.recv()
    assert welcome["type"] == "welcome" and welcome["user"] == sub
    await client.join(room)
    return Frames(client)


async def listed(servers: list[Server], names: list[str], room: str = "r") -> None:
    """Every node lists exactly ``names`` in ``room`` (its own and mirrored members)."""
    for s in servers:
        await wait_until(lambda s=s: s.app.core.members(room) == names, what=f"{names} everywhere")


def dms(f: Frames) -> list[str | None]:
    return [d["client_id"] for d in f.of("dm")]


async def test_direct_messages_cross_nodes_both_ways_and_reach_nobody_else(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node(), await cluster.node()
    ann, cat = await member(a, "ann"), await member(a, "cat")
    bob, dan = await member(b, "bob"), await member(b, "dan")
    await listed([a, b], ["ann", "bob", "cat", "dan"])
    await ann.client.send(type="dm", room="r", to="Bob", text="psst", id="d1")
    (got,) = await bob.wait("dm")
    assert (got["from"], got["to"], got["text"], got["client_id"]) == ("ann", "bob", "psst", "d1")
    (echo,) = await ann.wait("dm", client_id="d1")
    assert echo["id"] == got["id"]
    # Later dms from ann to each other member: one sender's payloads to a node keep
    # their order, so a stray copy of d1 would have reached them before these.
    await ann.client.send(type="dm", room="r", to="dan", text="x", id="d2")
    await ann.client.send(type="dm", room="r", to="cat", text="x", id="c1")
    await ann.client.send(type="dm", room="r", to="bob", text="x", id="d3")
    await dan.wait("dm", client_id="d2")
    await cat.wait("dm", client_id="c1")
    await bob.wait("dm", client_id="d3")
    assert (dms(bob), dms(dan), dms(cat)) == (["d1", "d3"], ["d2"], ["c1"])
    # And back, from B to A.
    await bob.client.send(type="dm", room="r", to="ANN", text="hi", id="b1")
    (back,) = await ann.wait("dm", client_id="b1")
    assert (back["from"], back["to"]) == ("bob", "ann")
    await bob.wait("dm", client_id="b1")  # bob's echo
    await bob.client.send(type="dm", room="r", to="cat", text="x", id="b2")
    await cat.wait("dm", client_id="b2")
    assert dms(cat) == ["c1", "b2"] and dms(dan) == ["d2"]
    assert not any(f.of("error") for f in (ann, bob, cat, dan))
    for f in (ann, bob, cat, dan):
        await f.close()


async def test_a_user_connected_to_two_nodes_gets_a_dm_once_on_each(cluster: Cluster) -> None:
    nodes = [await cluster.node(auth="token", jwt_secret=SECRET) for _ in range(3)]
    bob_a, bob_b = await user(nodes[0], "bob"), await user(nodes[1], "bob")
    cat = await user(nodes[0], "cat")
    ann = await user(nodes[2], "ann")
    await listed(nodes, ["ann", "bob", "cat"])
    room = nodes[2].app.core.rooms["r"]
    await wait_until(lambda: sorted(room.remote) == ["node0/u:bob", "node0/u:cat", "node1/u:bob"])
    await ann.client.send(type="dm", room="r", to="bob", text="hello both", id="x1")
    for device in (bob_a, bob_b):
        (got,) = await device.wait("dm")
        assert (got["user"], got["to_user"], got["text"]) == ("ann", "bob", "hello both")
    await ann.client.send(type="dm", room="r", to="bob", text="again", id="x2")
    await ann.client.send(type="dm", room="r", to="cat", text="you", id="x3")
    await bob_a.wait("dm", client_id="x2")
    await bob_b.wait("dm", client_id="x2")
    await cat.wait("dm", client_id="x3")
    assert dms(bob_a) == dms(bob_b) == ["x1", "x2"]  # once each, on both devices
    assert dms(cat) == ["x3"] and dms(ann) == ["x1", "x2", "x3"]  # the echoes
    for f in (bob_a, bob_b, cat, ann):
        await f.close()


async def test_a_dm_to_someone_who_left_is_refused(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    await bob.client.send(type="leave", room="r")
    await bob.wait("left_room")
    await listed([a], ["ann"])
    await ann.client.send(type="dm", room="r", to="bob", text="still there?", id="d1")
    (err,) = await ann.wait("error")
    assert (err["code"], err["ref"], err["id"]) == ("no_such_member", "dm", "d1")
    assert ann.of("dm") == [] and bob.of("dm") == []
    for f in (ann, bob):
        await f.close()


async def test_the_sender_learns_when_the_recipients_node_is_gone(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    # B dies without goodbyes: bob stays in A's list until B's lease lapses (10 s).
    assert b.app.cluster is not None
    await b.app.cluster.halt()
    await b.app.broker.close()
    await ann.client.send(type="dm", room="r", to="bob", text="are you there?", id="d1")
    await ann.wait("dm", client_id="d1")  # the echo: it went out
    (err,) = await ann.wait("error")
    assert (err["code"], err["ref"], err["room"], err["id"]) == ("unavailable", "dm", "r", "d1")
    assert "did not reach" in err["message"]
    assert bob.of("dm") == []
    for f in (ann, bob):
        await f.close()


async def test_a_delete_on_one_node_takes_the_members_of_every_node_out(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node(api_key=KEY), await cluster.node(api_key=KEY)
    ann = await member(a, "ann")
    bob, cat = await member(b, "bob"), await member(b, "cat")
    await listed([a, b], ["ann", "bob", "cat"])
    await bob.client.send(type="send", room="r", id="m1", text="before")
    (old,) = await ann.wait("message")
    marks = {id(f): len(f.frames) for f in (ann, bob, cat)}
    status, body = await http(a, "DELETE", "/api/rooms/r", key=KEY)
    assert status == 200 and body == {"deleted": "r", "members_removed": 1}
    for f in (ann, bob, cat):
        await f.wait("left_room", room="r", reason="deleted")
        # Nobody is told of a join; a member's leave may reach another node's
        # members just before the delete does (presence and the room's channel are
        # two Redis connections), and then names only members of the room.
        since = f.frames[marks[id(f)] :]
        kinds = {x["type"] for x in since}
        assert kinds <= {"left_room", "left", "presence"}, since
        left = {x["nick"] for x in since if x["type"] == "left"}
        for x in since:
            if x["type"] == "presence":
                assert not x.get("joined") and not x.get("renamed"), x
                left |= {y["nick"] for y in x.get("left", [])}
        assert left <= {"ann", "bob", "cat"}
    await wait_until(lambda: "r" not in b.app.core.rooms and "r" not in b.app.broker.subscribed)
    assert b.app.sequencer.cursor("r") is None
    # The name again: a new, empty room with a new epoch, on both nodes.
    await bob.client.send(type="join", room="r", nick="bob")
    (state,) = await bob.wait("room")  # (its first room frame came before Frames)
    assert state["epoch"] != old["epoch"] and state["seq"] == 0
    await bob.client.send(type="send", room="r", id="m2", text="after")
    (new,) = await bob.wait("message", client_id="m2")
    assert (new["seq"], new["epoch"]) == (1, state["epoch"])
    for f in (ann, bob, cat):
        await f.close()


async def test_a_reset_on_one_node_reaches_every_node_and_numbering_restarts(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node(api_key=KEY), await cluster.node(api_key=KEY)
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    for i in range(3):
        await (ann, bob)[i % 2].client.send(type="send", room="r", id=f"o{i}", text="old")
    for f in (ann, bob):
        await f.wait("message", 3)
    status, _, body = await _post(a, "/api/admin/rooms/r/reset")
    assert status == 200 and body["members_told"] == 1
    epoch = body["epoch"]
    for f in (ann, bob):
        (reset,) = await f.wait("reset")
        assert (reset["epoch"], reset["reason"], reset["seq"]) == (epoch, "epoch", 0)
    assert b.app.sequencer.epoch("r") == epoch
    await bob.client.send(type="send", room="r", id="n1", text="new")
    await ann.client.send(type="send", room="r", id="n2", text="new")
    for f in (ann, bob):
        await f.wait("message", 5)
        new = [(m["seq"], m["epoch"]) for m in f.frames[f.frames.index(f.of("reset")[0]) :]
               if m["type"] == "message"]  # fmt: skip
        assert new == [(1, epoch), (2, epoch)], f.frames
    for f in (ann, bob):
        await f.close()


async def _post(server: Server, path: str) -> tuple[int, None, Any]:
    status, body = await http(server, "POST", path, key=KEY)
    return status, None, body


async def test_no_message_of_the_old_epoch_arrives_after_a_reset_under_traffic(
    cluster: Cluster,
) -> None:
    # B's Redis is far away: A's control frame reaches B after B stored messages in
    # the new epoch, and B's last messages of the old epoch reach A after its reset.
    slow = await cluster.proxy(delay=0.05)
    a, b = await cluster.node(api_key=KEY), await cluster.node(via_proxy=slow, api_key=KEY)
    readers = [await member(a, "ra"), await member(b, "rb")]
    writers = [await member(a, "wa"), await member(b, "wb")]
    await listed([a, b], ["ra", "rb", "wa", "wb"])
    per_writer = 60

    async def write(i: int, w: Frames) -> None:
        for j in range(per_writer):
            await w.client.send(type="send", room="r", id=f"{i}-{j}", text=f"{i}:{j}")
            if j % 10 == 0:  # now and then, the answer (an ack, or unavailable while A resets)
                await wait_until(lambda j=j: any(f.get("id") == f"{i}-{j}" for f in w.frames))
            else:
                await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(write(i, w)) for i, w in enumerate(writers)]
    await readers[0].wait("message", 30, within=20)
    status, _, body = await _post(a, "/api/admin/rooms/r/reset")
    assert status == 200
    await asyncio.gather(*tasks)
    await readers[0].client.send(type="send", room="r", id="last", text="last")
    for f in readers:
        await f.wait("message", within=20, client_id="last")
    runs = []
    for f in readers:
        (reset,) = f.of("reset")
        assert (reset["epoch"], reset["seq"]) == (body["epoch"], 0)
        at = f.frames.index(reset)
        before = [m for m in f.frames[:at] if m["type"] == "message"]
        after = [m for m in f.frames[at:] if m["type"] == "message"]
        assert {m["epoch"] for m in before} == {readers[0].of("message")[0]["epoch"]}
        assert {m["epoch"] for m in after} == {body["epoch"]}, "an old message after the reset"
        assert [m["seq"] for m in after] == list(range(1, len(after) + 1))
        runs.append([(m["seq"], m["client_id"]) for m in after])
    assert runs[0] == runs[1]  # every message of the new epoch, once, in order, on both
    for f in readers + writers:
        await f.close()


@pytest.mark.parametrize("op", ["reset", "delete"])
async def test_a_node_that_missed_it_converges_from_the_store(cluster: Cluster, op: str) -> None:
    proxy = await cluster.proxy()
    a = await cluster.node(api_key=KEY)
    b = await cluster.node(via_proxy=proxy, api_key=KEY)
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    await proxy.cut()  # B hears nothing from Redis: no control frame reaches it
    if op == "reset":
        status, _, body = await _post(a, "/api/admin/rooms/r/reset")
        assert status == 200
        (reset,) = await bob.wait("reset", within=15)  # B's position check (every 2 s)
        assert (reset["epoch"], reset["seq"]) == (body["epoch"], 0)
    else:
        status, body = await http(a, "DELETE", "/api/rooms/r", key=KEY)
        assert status == 200
        await bob.wait("left_room", within=15, reason="deleted")
        assert "r" not in b.app.core.rooms
    await proxy.resume()
    if op == "reset":
        await ann.client.send(type="send", room="r", id="n1", text="new")
        (msg,) = await bob.wait("message", within=15)
        assert (msg["seq"], msg["epoch"]) == (1, body["epoch"])
    for f in (ann, bob):
        await f.close()
