"""Members of other nodes mirrored into the core: listed, counted, clashing, told."""

from __future__ import annotations

from hubbub import protocol as p
from hubbub.core import ChatCore, ChatLimits, Identity, Publish, Reply

WALL = 1_700_000_000.0


def make() -> ChatCore:
    return ChatCore(
        ChatLimits(rate=0, room_create_rate=0),
        clock=lambda: 100.0,
        wallclock=lambda: WALL,
        coalesce_presence=True,
    )


def join(core: ChatCore, fd: int, room: str, nick: str, identity: Identity | None = None) -> list:
    core.connect(fd, None, identity)
    out = core.handle(fd, p.Join(room, nick=nick))
    core.flush_presence()
    return out


def frames(core: ChatCore) -> list[p.ServerFrame]:
    return [e.frame for e in core.flush_presence() if isinstance(e, Publish)]


def test_remote_members_are_listed_counted_and_paged() -> None:
    core = make()
    join(core, 1, "r", "ann")
    assert core.remote_join("r", "B/c:1", "bob", None, quiet=True)
    assert core.remote_join("r", "B/u:u-cat", "cat", "u-cat", quiet=True)
    assert frames(core) == []  # quiet: the joiner's room frame lists them
    assert core.members("r") == ["ann", "bob", "cat"]
    state = core.room_state(1, "r", "e", 0)
    assert state is not None and state.members == ["ann", "bob", "cat"] and state.count == 3
    assert state.users == {"cat": "u-cat"}
    who = core.handle(1, p.Who("r", limit=2))
    assert isinstance(who[0], Reply) and who[0].frame.members == ["ann", "bob"]  # type: ignore[union-attr]
    assert who[0].frame.has_more  # type: ignore[union-attr]
    assert not core.remote_join("elsewhere", "B/c:2", "dan", None)  # not followed: ignored


def test_remote_changes_are_told_to_local_members() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_join("r", "B/c:1", "bob", None)
    assert frames(core) == [p.Joined("r", "bob", WALL)]
    core.remote_rename("r", "B/c:1", "robert")
    assert frames(core) == [p.Renamed("r", "bob", "robert", WALL)]
    core.remote_leave("r", "B/c:1")
    assert frames(core) == [p.Left("r", "robert", WALL)]
    assert core.members("r") == ["ann"]


def test_sync_makes_the_remote_list_exactly_the_read_one() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_sync("r", {"B/c:1": ("bob", None), "B/c:2": ("cat", None)}, quiet=True)
    assert core.remote_sync("r", {"B/c:2": ("kitty", None), "C/c:1": ("dan", None)}) == 3
    (frame,) = frames(core)
    assert isinstance(frame, p.Presence)
    assert [x.nick for x in frame.left] == ["bob"] and [x.nick for x in frame.joined] == ["dan"]
    assert [(r.old, r.nick) for r in frame.renamed] == [("cat", "kitty")]
    assert core.members("r") == ["ann", "dan", "kitty"]


def test_lookalikes_of_remote_members_are_refused_their_exact_name_left_to_the_claim() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_join("r", "B/c:1", "bob", None, quiet=True)
    core.connect(2)
    (err,) = core.handle(2, p.Join("r", nick="b\u043eb"))  # bob with a Cyrillic o
    assert isinstance(err, Reply) and err.frame.code == p.E_NICK_CONFUSABLE  # type: ignore[union-attr]
    (err,) = core.handle(1, p.SetNick("BOB"))  # a rename: refused by the mirror
    assert isinstance(err, Reply) and err.frame.code == p.E_NICK_TAKEN  # type: ignore[union-attr]
    # The exact name: a client back on another node before the old one saw it go.
    # The local one takes the name (no change shown), the claim decides.
    out = core.handle(2, p.Join("r", nick="bob"))
    assert not any(isinstance(e, Reply) for e in out)
    assert core.members("r") == ["ann", "bob"] and core.member_count("r") == 2
    assert frames(core) == []
    core.remote_leave("r", "B/c:1")  # the old entry goes: still nothing to tell
    assert frames(core) == [] and core.members("r") == ["ann", "bob"]


def test_a_lost_claim_brings_the_remote_member_back() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_join("r", "B/c:1", "bob", None, quiet=True)
    core.connect(2)
    core.handle(2, p.Join("r", nick="bob"))
    core.flush_presence()
    core.drop_membership(2, "r")  # the claim was lost: the app takes it out
    assert core.members("r") == ["ann", "bob"]
    assert core.rooms["r"].by_key["bob"] is core.rooms["r"].remote["B/c:1"]
    core.remote_leave("r", "B/c:1")
    assert core.members("r") == ["ann"] and frames(core) == [p.Left("r", "bob", WALL)]


def test_one_user_on_two_nodes_is_one_member() -> None:
    core = make()
    ann = Identity("u-ann", name="ann")
    join(core, 9, "r", "zed")
    core.remote_join("r", "B/u:u-ann", "ann", "u-ann", quiet=True)
    out = join(core, 1, "r", "ann", ann)  # the same user, here too: not a clash
    assert not any(isinstance(e, Reply) and e.frame.type == "error" for e in out)  # type: ignore[union-attr]
    assert core.members("r") == ["ann", "zed"]
    assert frames(core) == []  # nobody came: ann was already in
    core.handle(1, p.Leave("r"))
    assert core.members("r") == ["ann", "zed"]  # still in, on the other node
    assert frames(core) == []
    core.remote_leave("r", "B/u:u-ann")
    assert core.members("r") == ["zed"]
    assert frames(core) == [p.Left("r", "ann", WALL, "u-ann")]


def test_a_dm_to_a_member_of_another_node_is_relayed_to_its_node() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_join("r", "B/c:1", "bob", None, quiet=True)
    relay, echo = core.handle(1, p.Direct("r", "bob", "hi", "d1"))
    assert (relay.node, relay.to) == ("B", ("B/c:1",))  # type: ignore[union-attr]
    assert isinstance(echo, Reply) and echo.fd == 1  # more in tests/core/test_dm_nodes.py


def test_the_mirror_goes_with_the_last_local_member() -> None:
    core = make()
    join(core, 1, "r", "ann")
    core.remote_join("r", "B/c:1", "bob", None, quiet=True)
    core.handle(1, p.Leave("r"))
    assert "r" not in core.rooms and core.members("r") == []
