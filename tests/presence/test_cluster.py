"""ClusterPresence on the in-memory backend, with a fake clock for the leases:
claims, the mirror, a dead node's members removed, a paused node coming back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub import protocol as p
from hubbub.core import ChatCore, ChatLimits, Effect, Publish
from hubbub.presence import ClusterPresence, MemoryBackend, MemoryPresence
from hubbub.presence.base import Event, PresenceError, decode_event, encode_event

WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A node without sockets: a core, its ClusterPresence, the frames it would publish."""

    def __init__(self, backend: MemoryBackend, name: str) -> None:
        self.core = ChatCore(
            ChatLimits(rate=0, room_create_rate=0), wallclock=lambda: WALL, coalesce_presence=True
        )
        self.told: list[p.ServerFrame] = []
        self.lost: list[tuple[int, str]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        manager = MemoryPresence(backend, name, lease_ttl=10.0, renew_every=3.0)
        self.presence = ClusterPresence(self.core, manager, self.run, self.spawn, self.on_lost)

    def run(self, effects: list[Effect]) -> None:
        effects = [*effects, *self.core.flush_presence()]
        self.told += [e.frame for e in effects if isinstance(e, Publish)]

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def on_lost(self, fd: int, room: str) -> None:
        self.lost.append((fd, room))
        self.run(self.core.drop_membership(fd, room))
        self.presence.release(fd, room)

    async def join(self, fd: int, room: str, nick: str) -> bool:
        self.core.connect(fd)
        self.run(self.core.handle(fd, p.Join(room, nick=nick)))
        await self.presence.follow(room)
        ok = await self.presence.claim(fd, room)
        if not ok:
            self.run(self.core.drop_membership(fd, room))
        return ok

    async def leave(self, fd: int, room: str) -> None:
        self.run(self.core.handle(fd, p.Leave(room)))
        self.presence.release(fd, room)
        await self.settle()

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def two(clock: Clock) -> tuple[MemoryBackend, Node, Node]:
    backend = MemoryBackend(clock)
    a, b = Node(backend, "A"), Node(backend, "B")
    await a.presence.start()
    await b.presence.start()
    return backend, a, b


async def lose_cat(backend: MemoryBackend, a: Node, b: Node) -> None:
    """B's cat joins the room; the event is lost on the way to A (A's broker missed it)."""
    del backend.listeners["A"]
    await b.join(2, "r", "cat")
    backend.listeners["A"] = a.presence.on_event


async def cat_lost_by_a(clock: Clock) -> Node:
    """Two nodes: A with ann (version 1), B with bob (2); B's cat (3) never reaches A."""
    backend, a, b = await two(clock)
    await a.join(1, "r", "ann")
    await b.join(1, "r", "bob")
    await lose_cat(backend, a, b)
    return a


async def read_again(a: Node) -> None:
    """Behind once at a version check: maybe in flight; behind twice: A reads the room."""
    await a.presence.tick()
    await a.presence.tick()
    await a.settle()


async def test_members_of_both_nodes_are_in_each_list(clock: Clock) -> None:
    _, a, b = await two(clock)
    assert await a.join(1, "r", "ann")
    assert await b.join(1, "r", "bob")
    assert a.core.members("r") == ["ann", "bob"] == b.core.members("r")
    assert p.Joined("r", "bob", WALL) in a.told  # a's members are told
    await b.leave(1, "r")
    assert a.core.members("r") == ["ann"]
    assert a.told[-1] == p.Left("r", "bob", WALL)


async def test_the_claim_is_atomic_across_nodes(clock: Clock) -> None:
    _, a, b = await two(clock)
    # Both cores see an empty room (no mirror yet): the backend decides.
    results = await asyncio.gather(a.join(1, "r", "zed"), b.join(1, "r", "ZED"))
    assert sorted(results) == [False, True]
    assert a.core.members("r") + b.core.members("r") in (["zed"], ["ZED"], ["zed", "zed"])


async def test_a_dead_nodes_members_are_removed_once_its_lease_lapses(clock: Clock) -> None:
    backend, a, b = await two(clock)
    c = Node(backend, "C")
    await c.presence.start()
    await a.join(1, "r", "ann")
    await a.join(2, "r", "cat")
    await b.join(1, "r", "bob")
    await c.join(1, "r", "cy")
    assert b.core.members("r") == ["ann", "bob", "cat", "cy"]
    a.presence.halted = True  # A stops renewing (it died)
    clock.now += 9.0
    await b.presence.tick()
    await c.presence.tick()
    assert b.core.members("r") == ["ann", "bob", "cat", "cy"]  # lease still valid
    clock.now += 1.5
    await b.presence.tick()  # B reaps A (one node does)
    await c.presence.tick()  # nothing left to reap
    assert b.core.members("r") == ["bob", "cy"] == c.core.members("r")
    left = b.told[-1]
    assert isinstance(left, p.Presence) and sorted(x.nick for x in left.left) == ["ann", "cat"]
    assert "A" not in backend.nodes
    assert await c.join(2, "r", "ann")  # the name is free again: no ghost


async def test_a_paused_node_registers_its_members_again(clock: Clock) -> None:
    _backend, a, b = await two(clock)
    await a.join(1, "r", "ann")
    await b.join(1, "r", "bob")
    clock.now += 11.0  # A was paused past its lease
    await b.presence.tick()
    assert b.core.members("r") == ["bob"]
    await a.presence.tick()  # A wakes: its lease had lapsed
    await a.settle()
    assert b.core.members("r") == ["ann", "bob"]
    assert a.core.members("r") == ["ann", "bob"]  # A's own clients saw no change
    assert [f for f in a.told if isinstance(f, p.Left)] == []


async def test_a_nickname_taken_while_paused_takes_the_member_out(clock: Clock) -> None:
    _, a, b = await two(clock)
    await a.join(1, "r", "ann")
    await b.join(1, "r", "bob")
    clock.now += 11.0
    await b.presence.tick()
    assert await b.join(2, "r", "ann")  # free now, taken on B
    await a.presence.tick()
    await a.settle()
    assert a.lost == [(1, "r")]
    assert b.core.members("r") == ["ann", "bob"]


async def test_a_lost_event_is_caught_by_the_version_check(clock: Clock) -> None:
    a = await cat_lost_by_a(clock)
    assert a.core.members("r") == ["ann", "bob"]
    await read_again(a)
    assert a.core.members("r") == ["ann", "bob", "cat"]


async def test_a_lost_event_is_caught_even_after_an_own_change(clock: Clock) -> None:
    a = await cat_lost_by_a(clock)
    assert await a.join(2, "r", "dan")  # version 4, A's own: the room is not "caught up"
    await read_again(a)
    assert a.core.members("r") == ["ann", "bob", "cat", "dan"]


async def test_a_lost_event_is_caught_after_a_rename_undone(clock: Clock) -> None:
    """The undo of a refused rename registers again what is there already: the answer
    is the room's version (another node's, lost here), not a change of A's."""
    a = await cat_lost_by_a(clock)
    a.run(a.core.handle(1, p.SetNick("cat")))  # A's mirror has no cat
    assert await a.presence.rename(1) == ["r"]  # B's cat holds it
    a.run(a.core.handle(1, p.SetNick("ann")))  # undone (as NodePresence.renamed does)
    assert await a.presence.rename(1) == []  # nothing changes in the backend
    await read_again(a)
    assert a.core.members("r") == ["ann", "bob", "cat"]


def empty(backend: MemoryBackend) -> None:
    """What a Redis restarted without its data looks like: nothing at all."""
    backend.rooms.clear()
    backend.leases.clear()
    backend.nodes.clear()


async def test_an_emptied_backend_is_filled_again_by_every_node(clock: Clock) -> None:
    backend, a, b = await two(clock)
    for n in range(3):
        await a.join(10 + n, "r", f"a{n}")
    for _ in range(5):  # A's own changes take the room's version well above what follows
        await a.join(20, "r", "tmp")
        await a.leave(20, "r")
    await b.join(1, "r", "bob")
    empty(backend)
    await a.presence.tick()  # its lease is gone: A registers its members again
    await b.presence.tick()
    await a.settle()
    await b.settle()
    assert a.core.members("r") == ["a0", "a1", "a2", "bob"] == b.core.members("r")
    room = backend.rooms["r"]
    assert sorted(room.claims) == ["a0", "a1", "a2", "bob"] and backend.alive("A")
    # The room's numbering started again: a change A misses now is still caught.
    await lose_cat(backend, a, b)
    await read_again(a)
    assert a.core.members("r") == ["a0", "a1", "a2", "bob", "cat"]


async def test_a_broker_reconnect_registers_the_members_again_at_once(clock: Clock) -> None:
    backend, a, b = await two(clock)
    await a.join(1, "r", "ann")
    await b.join(1, "r", "bob")
    empty(backend)
    a.presence.reconnected()  # the broker came back (to an empty Redis): no tick needed
    await a.settle()
    assert backend.alive("A") and backend.rooms["r"].claims == {"ann": "c:A/c:1"}
    assert not await b.join(2, "r", "ann")  # the claim holds again


async def test_a_registration_cut_short_after_a_restart_is_finished(clock: Clock) -> None:
    backend, a, b = await two(clock)
    await a.join(1, "r", "ann")
    await b.join(1, "r", "bob")
    await b.join(2, "r", "bea")
    empty(backend)
    join = a.presence.manager.join

    def fails(room: str, entry: Any) -> Any:
        raise PresenceError("Redis went away again")

    a.presence.manager.join = fails  # type: ignore[method-assign]
    await a.presence.tick()  # the lease is taken again, the members are not registered
    a.presence.manager.join = join  # type: ignore[method-assign]
    await b.leave(2, "r")  # while A had not read the room again
    await b.presence.tick()
    for _ in range(2):
        await a.presence.tick()
    await a.settle()
    await b.settle()
    assert backend.rooms["r"].claims == {"ann": "c:A/c:1", "bob": "c:B/c:1"}
    assert a.core.members("r") == ["ann", "bob"] == b.core.members("r")


async def test_events_older_than_the_read_list_are_skipped(clock: Clock) -> None:
    _, a, b = await two(clock)
    await b.join(1, "r", "bob")
    await a.join(1, "r", "ann")
    a.presence.on_event(Event("r", "leave", 1, ids=["B/c:1"]))  # version 1 is old
    assert a.core.members("r") == ["ann", "bob"]


def test_events_round_trip_and_bad_ones_are_refused() -> None:
    join = Event("r", "join", 7, entries=[("A/c:1", "ann", None), ("A/u:x", "X", "x")])
    leave = Event("r", "leave", 8, ids=["A/c:1"])
    for event in (join, leave):
        assert decode_event("r", encode_event(event)) == event
    for bad in (
        b"{",
        b'{"type":"~presence","op":"join","e":[[1]],"v":1}',
        b'{"op":"x","e":[],"v":1}',
    ):
        assert decode_event("r", bad) is None


def test_one_node_runs_no_cluster_presence_and_tags_are_short() -> None:
    from hubbub.broker import LocalBroker
    from hubbub.presence.node import NodePresence, node_tag

    core = ChatCore()
    hooks: dict[str, Any] = {"core": core, "run": print, "spawn": print}
    assert NodePresence.for_broker(LocalBroker(), None, reply=print, drop=print, **hooks) is None
    assert core.default_nick(3) == "user-3"  # one node: as it always was
    assert node_tag("node0") == "node0"
    tag = node_tag("3f9a0c2b7d1e4a55")
    assert len(tag) == 6 and tag == node_tag("3f9a0c2b7d1e4a55") != node_tag("3f9a0c2b7d1e4a56")


async def test_a_lost_event_is_caught_after_a_failed_rename_undone(clock: Clock) -> None:
    """A rename whose join failed (not applied), then undone: the undo registers what
    Redis holds already, and its answer (the room's version: another node's event,
    lost here) must be read as such, not taken for a change of A's."""
    a = await cat_lost_by_a(clock)
    manager = a.presence.manager
    join = manager.join

    async def failing(room: str, entry: Any) -> int | None:
        manager.join = join  # once
        raise PresenceError("connection lost before the command was sent")

    manager.join = failing  # type: ignore[method-assign]
    a.run(a.core.handle(1, p.SetNick("amy")))
    await a.presence.rename(1)
    await a.settle()
    a.run(a.core.handle(1, p.SetNick("ann")))  # undone
    await a.presence.rename(1)
    await a.settle()
    await read_again(a)
    assert a.core.members("r") == ["ann", "bob", "cat"]
