"""Direct messages to members of other nodes, in the core: the relay effect on the
sender's node, and the delivery on the recipient's (hubbub.core.remote)."""

from __future__ import annotations

from hubbub import protocol as p
from hubbub.core import ChatCore, Identity, Reply
from hubbub.core.effects import RemoteDirect

from .test_remote import WALL, make


def join(core: ChatCore, fd: int, room: str, nick: str, user: str | None = None) -> None:
    core.connect(fd, None, None if user is None else Identity(user, nick))
    core.handle(fd, p.Join(room, nick=nick))
    core.mark_live(fd, room)
    core.flush_presence()


def dm(core: ChatCore, fd: int, to: str, text: str = "psst") -> list:
    return core.handle(fd, p.Direct("r", to, text, id="d1"))


def test_a_dm_to_a_member_of_another_node_is_relayed_there_and_echoed_here() -> None:
    core = make()
    join(core, 1, "r", "ann")
    join(core, 2, "r", "cat")
    core.remote_join("r", "B/c:4", "bob", None, quiet=True)
    relay, echo = dm(core, 1, "BOB")
    assert isinstance(relay, RemoteDirect)
    assert (relay.node, relay.room, relay.to, relay.fd) == ("B", "r", ("B/c:4",), 1)
    frame = relay.frame
    assert (frame.sender, frame.to, frame.text, frame.client_id) == ("ann", "bob", "psst", "d1")
    assert isinstance(echo, Reply) and (echo.fd, echo.frame) == (1, frame)  # cat: nothing


def test_a_user_on_two_other_nodes_gets_one_relay_per_node() -> None:
    core = make()
    join(core, 1, "r", "ann", "u-ann")
    core.remote_join("r", "B/u:u-bob", "bob", "u-bob", quiet=True)
    core.remote_join("r", "C/u:u-bob", "bob", "u-bob", quiet=True)  # the same user: shadowed
    core.remote_join("r", "D/c:9", "Bob", None, quiet=True)  # someone else, same name: a clash
    assert core.members("r") == ["ann", "bob"]
    effects = dm(core, 1, "bob")
    relays = [e for e in effects if isinstance(e, RemoteDirect)]
    assert [(e.node, e.to) for e in relays] == [("B", ("B/u:u-bob",)), ("C", ("C/u:u-bob",))]
    assert all(e.frame.to_user == "u-bob" and e.frame.user == "u-ann" for e in relays)
    assert [e.fd for e in effects if isinstance(e, Reply)] == [1]  # the sender's echo


def test_a_user_here_and_on_another_node_gets_it_on_both() -> None:
    core = make()
    join(core, 1, "r", "ann")
    join(core, 2, "r", "bob", "u-bob")
    join(core, 3, "r", "bob", "u-bob")  # a second device, here
    core.remote_join("r", "B/u:u-bob", "bob", "u-bob", quiet=True)  # a third, on B
    effects = dm(core, 1, "bob")
    assert [type(e).__name__ for e in effects] == ["Reply", "Reply", "RemoteDirect", "Reply"]
    assert [e.fd for e in effects if isinstance(e, Reply)] == [2, 3, 1]
    (relay,) = [e for e in effects if isinstance(e, RemoteDirect)]
    assert relay.to == ("B/u:u-bob",)


def test_a_dm_to_your_own_user_on_another_node_is_a_dm_to_yourself() -> None:
    core = make()
    join(core, 1, "r", "ann", "u-ann")
    core.remote_join("r", "B/u:u-ann", "annie", "u-ann", quiet=True)  # renamed over there
    (err,) = dm(core, 1, "annie")
    assert isinstance(err, Reply) and err.frame.code == p.E_DM_SELF  # type: ignore[union-attr]


def test_a_member_who_left_another_node_cannot_be_sent_a_dm() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_join("r", "B/c:4", "bob", None, quiet=True)
    core.remote_leave("r", "B/c:4")
    (err,) = dm(core, 1, "bob")
    assert isinstance(err, Reply) and err.frame.code == p.E_NO_SUCH_MEMBER  # type: ignore[union-attr]


def relayed(to: str = "bob") -> p.DirectMessage:
    return p.DirectMessage("r", "id1", to, "psst", WALL, "d1", sender="ann")


def test_a_relayed_dm_reaches_every_connection_of_its_member_in_the_room() -> None:
    core = make()
    join(core, 5, "r", "bob", "u-bob")
    join(core, 7, "r", "bob", "u-bob")
    core.connect(6, None, Identity("u-bob", "bob"))  # bob's third connection, not in r
    join(core, 8, "r", "cat")
    frame = relayed()
    out = core.direct_in("r", ["u:u-bob"], frame)
    assert [(e.fd, e.frame) for e in out] == [(5, frame), (7, frame)]  # type: ignore[union-attr]
    out = core.direct_in("r", ["c:8"], frame)
    assert [e.fd for e in out] == [8]  # type: ignore[union-attr]


def test_a_relayed_dm_for_someone_no_longer_here_is_dropped() -> None:
    core = make()
    join(core, 5, "r", "bob", "u-bob")
    join(core, 8, "r", "cat")
    frame = relayed()
    assert core.direct_in("elsewhere", ["u:u-bob"], frame) == []  # no such room here
    assert core.direct_in("r", ["u:u-dan", "c:99", "c:5"], frame) == []  # c:5 is a user's
    assert core.direct_in("r", ["x:1", "c:", "c:-1", "c:²", "u:", "c:1" + "0" * 30], frame) == []
    core.handle(5, p.Leave("r"))
    assert core.direct_in("r", ["u:u-bob"], frame) == []
    core.disconnect(8)
    assert core.direct_in("r", ["c:8"], frame) == []
