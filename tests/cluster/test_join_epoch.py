"""A join on node B while B still follows an older epoch of the room than the store's
(the room was reset on node A, and B has not heard yet): B answers the join from the
store and moves the room to the store's epoch at once (hubbub.apps.catchup,
``_follow_store``), so the joiner and B's other members agree: those get ``reset``,
the joiner a ``room`` frame of the new epoch and never a ``reset``.

B's Redis subscriber is held by the proxy of test_delete_race (nothing lost, only
late), and the position check (which would find the new epoch within 2 s) is made
rare, so that only the join can tell B."""

from __future__ import annotations

import pytest

from hubbub.apps import chat
from hubbub.apps.admin_api import reset_room
from tests.apps.test_chat import Client

from .conftest import Cluster
from .test_cross_node import Frames, listed, member
from .test_delete_race import two_nodes


@pytest.mark.parametrize("fresh", [1, 4], ids=["behind-the-cursor", "past-the-cursor"])
async def test_a_join_moves_the_node_to_the_stores_newer_epoch(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, fresh: int
) -> None:
    """``fresh`` messages of the new epoch before the join: fewer than B's cursor of
    the old one (the join's wait for the cursor would end at once), or more (it would
    wait for a position read in the old epoch)."""
    monkeypatch.setattr(chat, "POSITION_PERIOD", 600.0)
    a, b, proxy = await two_nodes(cluster)
    ann, bob = await member(a, "ann"), await member(b, "bob")
    await listed([a, b], ["ann", "bob"])
    for i in (1, 2):
        await bob.client.send(type="send", room="r", id=f"m{i}", text=f"old {i}")
    old = await ann.wait("message", 2)
    await bob.wait("message", 2)
    # A resets the room; B does not hear of it (its subscriber is held).
    proxy.gate.clear()
    done = await reset_room(a.app, "r")
    assert done is not None
    new = done[0].epoch
    assert new != old[0]["epoch"]
    await ann.wait("reset", room="r", epoch=new)
    for i in range(1, fresh + 1):
        await ann.client.send(type="send", room="r", id=f"n{i}", text=f"new {i}")
    await ann.wait("message", epoch=new, seq=fresh)
    # carl joins on B: told the store's state, and B follows the new epoch from now.
    carl = Frames(await Client.open(b))
    await carl.client.send(type="join", room="r", nick="carl")
    (state,) = await carl.wait("room")
    assert (state["epoch"], state["seq"]) == (new, fresh)
    (reset,) = await bob.wait("reset", room="r", within=5.0)
    assert reset["epoch"] == new
    assert b.app.sequencer.epoch("r") == new
    await bob.wait("message", epoch=new, seq=fresh)  # read from the store
    # A's reset frame comes late: B is there already. Live messages reach both.
    proxy.gate.set()
    await ann.client.send(type="send", room="r", id="live", text="live")
    for f in (bob, carl):
        (live,) = await f.wait("message", epoch=new, seq=fresh + 1)
        assert live["text"] == "live"
    assert carl.of("reset") == [] and carl.of("error") == [] and carl.of("left_room") == []
    assert [m["seq"] for m in carl.of("message")] == [fresh + 1]
    assert [m["seq"] for m in bob.of("message", epoch=new)] == list(range(1, fresh + 2))
    assert len(bob.of("reset")) == 1 and bob.of("error") == []
    for f in (ann, bob, carl):
        await f.close()
