"""The sans-I/O chat core, driven directly with fake clocks: no sockets, no store."""

from __future__ import annotations

import json

import pytest

from hubbub import protocol as p
from hubbub.core import (
    Catchup,
    ChatCore,
    ChatLimits,
    Close,
    Effect,
    LoadHistory,
    Persist,
    Publish,
    Reply,
    RoomsQuery,
)


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


WALL = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(clock: FakeClock) -> ChatCore:
    # Rate limiting off unless a test asks for it, so tests can send freely.
    return ChatCore(ChatLimits(rate=0), clock=clock, wallclock=lambda: WALL)


def connect(core: ChatCore, *fds: int) -> None:
    for fd in fds:
        core.connect(fd)


def join(core: ChatCore, fd: int, room: str, nick: str | None = None) -> list[Effect]:
    return core.handle(fd, p.Join(room, nick=nick))


def only_error(effects: list[Effect], fd: int) -> p.Error:
    assert len(effects) == 1, effects
    (eff,) = effects
    assert isinstance(eff, Reply) and eff.fd == fd
    assert isinstance(eff.frame, p.Error)
    return eff.frame


# ---------------------------------------------------------------------------
# connections


def test_connect_replies_welcome_with_default_nick(core: ChatCore) -> None:
    effects = core.connect(7, {"rate": 20.0})
    assert effects == [Reply(7, p.Welcome(p.SUBPROTOCOL, 7, "user-7", {"rate": 20.0}))]
    assert core.nick_of(7) == "user-7"
    assert list(core.fds()) == [7]


def test_connect_without_limits_gives_empty_limits(core: ChatCore) -> None:
    (eff,) = core.connect(3)
    assert isinstance(eff, Reply) and isinstance(eff.frame, p.Welcome)
    assert eff.frame.limits == {}
    assert eff.frame.protocol == "hubbub.v1"


def test_frames_from_unknown_connection_are_ignored(core: ChatCore) -> None:
    assert core.handle(99, p.Ping("x")) == []
    assert core.disconnect(99) == []


# ---------------------------------------------------------------------------
# join


def test_join_publishes_joined_and_asks_for_catchup(core: ChatCore) -> None:
    connect(core, 1)
    effects = core.handle(1, p.Join("lobby", since=5, epoch="ep"))
    assert effects == [
        Publish("lobby", p.Joined("lobby", "user-1", WALL)),
        Catchup(1, "lobby", 5, "ep"),
    ]
    assert core.is_member(1, "lobby")
    assert core.members("lobby") == ["user-1"]


def test_join_without_since_catches_up_from_none(core: ChatCore) -> None:
    connect(core, 1)
    effects = join(core, 1, "lobby")
    assert effects[-1] == Catchup(1, "lobby", None, None)


def test_join_twice_is_already_joined(core: ChatCore) -> None:
    connect(core, 1)
    join(core, 1, "lobby")
    err = only_error(join(core, 1, "lobby"), 1)
    assert err.code == p.E_ALREADY_IN_ROOM == "already_joined"
    assert err.ref == "join"
    assert err.room == "lobby"
    assert core.member_counts() == {"lobby": 1}


def test_join_with_nick_sets_the_nick(core: ChatCore) -> None:
    connect(core, 1)
    effects = join(core, 1, "lobby", "ann")
    assert effects == [
        Publish("lobby", p.Joined("lobby", "ann", WALL)),
        Catchup(1, "lobby", None, None),
    ]
    assert core.nick_of(1) == "ann"
    assert core.members("lobby") == ["ann"]


def test_nick_uniqueness_is_case_insensitive_in_a_room(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "Ann")
    err = only_error(join(core, 2, "lobby", "ann"), 2)
    assert err.code == p.E_NICK_TAKEN == "nick_taken"
    assert err.ref == "join"
    assert err.room == "lobby"
    # No membership, and the refused nickname was not taken on.
    assert not core.is_member(2, "lobby")
    assert core.nick_of(2) == "user-2"
    assert core.members("lobby") == ["Ann"]
    assert core.member_counts() == {"lobby": 1}


def test_join_without_nick_clashing_default_nick(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "USER-2")
    err = only_error(join(core, 2, "lobby"), 2)
    assert err.code == p.E_NICK_TAKEN
    assert not core.is_member(2, "lobby")


def test_same_nick_in_different_rooms_by_different_connections(core: ChatCore) -> None:
    connect(core, 1, 2)
    assert not _errors(join(core, 1, "red", "ann"))
    assert not _errors(join(core, 2, "blue", "ann"))
    assert core.members("red") == ["ann"]
    assert core.members("blue") == ["ann"]
    assert core.nick_of(1) == core.nick_of(2) == "ann"


def test_join_with_nick_taken_in_another_of_my_rooms_fails_without_membership(
    core: ChatCore,
) -> None:
    connect(core, 1, 2)
    join(core, 1, "red", "ann")
    join(core, 2, "red", "bob")
    # fd 2 tries to join "blue" as "ann": blue is free, but 2 is also in red
    # where "ann" is someone else.
    err = only_error(join(core, 2, "blue", "ann"), 2)
    assert err.code == p.E_NICK_TAKEN
    assert err.room == "red"
    assert not core.is_member(2, "blue")
    assert "blue" not in core.member_counts()
    assert core.nick_of(2) == "bob"


def test_join_with_new_nick_renames_in_existing_rooms(core: ChatCore) -> None:
    connect(core, 1)
    join(core, 1, "red")
    effects = join(core, 1, "blue", "ann")
    assert effects == [
        Publish("red", p.Renamed("red", "user-1", "ann", WALL)),
        Publish("blue", p.Joined("blue", "ann", WALL)),
        Catchup(1, "blue", None, None),
    ]
    assert core.members("red") == ["ann"]


def test_room_state_lists_members_sorted(core: ChatCore) -> None:
    connect(core, 1, 2, 3)
    join(core, 1, "lobby", "carol")
    join(core, 2, "lobby", "Bob")
    join(core, 3, "lobby", "alice")
    state = core.room_state(2, "lobby", "ep", 12)
    assert state == p.RoomState("lobby", "Bob", "ep", 12, ["alice", "Bob", "carol"], 3)
    assert core.room_state(2, "nowhere", "ep", 0) is None
    assert core.room_state(42, "lobby", "ep", 0) is None


def test_room_full_is_unavailable(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=0, max_members_per_room=2), clock=clock)
    connect(core, 1, 2, 3)
    join(core, 1, "lobby")
    join(core, 2, "lobby")
    err = only_error(join(core, 3, "lobby", "carol"), 3)
    assert err.code == p.E_UNAVAILABLE
    assert not core.is_member(3, "lobby")
    assert core.nick_of(3) == "user-3"


def test_max_rooms_per_connection(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=0, max_rooms_per_connection=2), clock=clock)
    connect(core, 1)
    assert not _errors(join(core, 1, "a"))
    assert not _errors(join(core, 1, "b"))
    err = only_error(join(core, 1, "c"), 1)
    assert err.code == p.E_TOO_MANY_ROOMS == "too_many_rooms"
    assert "2" in err.message
    assert not core.is_member(1, "c")
    # Leaving one makes room for another.
    core.handle(1, p.Leave("a"))
    assert not _errors(join(core, 1, "c"))


# ---------------------------------------------------------------------------
# nick


def test_rename_publishes_to_every_room_and_replies(core: ChatCore) -> None:
    connect(core, 1)
    join(core, 1, "red")
    join(core, 1, "blue")
    effects = core.handle(1, p.SetNick("ann"))
    assert effects == [
        Publish("blue", p.Renamed("blue", "user-1", "ann", WALL)),
        Publish("red", p.Renamed("red", "user-1", "ann", WALL)),
        Reply(1, p.NickSet("ann")),
    ]
    assert core.nick_of(1) == "ann"
    assert core.members("red") == ["ann"]
    assert core.members("blue") == ["ann"]


def test_rename_frees_the_old_nick(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    core.handle(1, p.SetNick("anna"))
    assert not _errors(join(core, 2, "lobby", "ann"))
    err = only_error(core.handle(2, p.SetNick("ANNA")), 2)
    assert err.code == p.E_NICK_TAKEN


def test_rename_outside_rooms_only_replies(core: ChatCore) -> None:
    connect(core, 1)
    assert core.handle(1, p.SetNick("ann")) == [Reply(1, p.NickSet("ann"))]


def test_rename_to_case_variant_of_own_nick(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    effects = core.handle(1, p.SetNick("Ann"))
    assert effects == [
        Publish("lobby", p.Renamed("lobby", "ann", "Ann", WALL)),
        Reply(1, p.NickSet("Ann")),
    ]
    assert core.members("lobby") == ["Ann"]
    # Still reserved case-insensitively.
    assert only_error(join(core, 2, "lobby", "ANN"), 2).code == p.E_NICK_TAKEN


def test_rename_to_taken_nick_changes_nothing(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "red", "ann")
    join(core, 1, "blue")  # ann is in red and blue
    join(core, 2, "blue", "bob")
    err = only_error(core.handle(1, p.SetNick("BOB")), 1)
    assert err.code == p.E_NICK_TAKEN
    assert err.ref == "nick"
    assert err.room == "blue"
    assert core.nick_of(1) == "ann"
    assert core.members("red") == ["ann"]
    assert core.members("blue") == ["ann", "bob"]
    # "ann" is still reserved for fd 1 in blue.
    connect(core, 3)
    assert only_error(join(core, 3, "blue", "Ann"), 3).code == p.E_NICK_TAKEN


# ---------------------------------------------------------------------------
# send, dm, typing


def test_send_when_not_a_member(core: ChatCore) -> None:
    connect(core, 1)
    err = only_error(core.handle(1, p.Send("lobby", "c1", "hi")), 1)
    assert err.code == p.E_NOT_IN_ROOM == "not_in_room"
    assert err.ref == "send"
    assert err.room == "lobby"
    assert err.id == "c1"


def test_send_as_member_persists_with_current_nick(core: ChatCore) -> None:
    connect(core, 1)
    join(core, 1, "lobby")
    assert core.handle(1, p.Send("lobby", "c1", "hi")) == [
        Persist(1, "lobby", "c1", "user-1", "hi")
    ]
    core.handle(1, p.SetNick("ann"))
    assert core.handle(1, p.Send("lobby", "c2", "again")) == [
        Persist(1, "lobby", "c2", "ann", "again")
    ]


def test_dm_reaches_target_and_sender(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    join(core, 2, "lobby", "Bob")
    effects = core.handle(1, p.Direct("lobby", "bob", "psst", id="d1"))
    assert [e.fd for e in effects if isinstance(e, Reply)] == [2, 1]
    assert len(effects) == 2
    to_target, to_sender = effects
    assert isinstance(to_target, Reply) and isinstance(to_sender, Reply)
    dm = to_target.frame
    assert to_sender.frame == dm
    assert isinstance(dm, p.DirectMessage)
    assert dm.sender == "ann"
    assert dm.to == "Bob"  # the member's real nick, not how it was typed
    assert dm.text == "psst"
    assert dm.room == "lobby"
    assert dm.client_id == "d1"
    assert dm.ts == WALL
    assert dm.id
    assert json.loads(p.encode(dm))["from"] == "ann"


def test_dm_to_self_is_refused(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    join(core, 2, "lobby", "bob")
    for to in ("ann", "ANN"):  # however it is typed
        err = only_error(core.handle(1, p.Direct("lobby", to, "note", id="d2")), 1)
        assert err.code == p.E_DM_SELF == "dm_self"
        assert (err.ref, err.room, err.id) == ("dm", "lobby", "d2")
        assert "yourself" in err.message


def test_dm_to_unknown_nick(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    join(core, 2, "other", "bob")  # bob exists, but not in lobby
    err = only_error(core.handle(1, p.Direct("lobby", "bob", "hi", id="d9")), 1)
    assert err.code == p.E_NO_SUCH_MEMBER == "no_such_member"
    assert err.ref == "dm"
    assert err.id == "d9"


def test_dm_when_not_a_member(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 2, "lobby", "bob")
    err = only_error(core.handle(1, p.Direct("lobby", "bob", "hi")), 1)
    assert err.code == p.E_NOT_IN_ROOM


def test_typing_publishes_typing_event(core: ChatCore) -> None:
    connect(core, 1)
    join(core, 1, "lobby", "ann")
    assert core.handle(1, p.Typing("lobby")) == [
        Publish("lobby", p.TypingEvent("lobby", "ann", True))
    ]
    assert core.handle(1, p.Typing("lobby", active=False)) == [
        Publish("lobby", p.TypingEvent("lobby", "ann", False))
    ]
    err = only_error(core.handle(1, p.Typing("elsewhere")), 1)
    assert err.code == p.E_NOT_IN_ROOM


# ---------------------------------------------------------------------------
# leave, disconnect, presence


def test_leave_publishes_left_and_replies(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    join(core, 2, "lobby", "bob")
    assert core.handle(1, p.Leave("lobby")) == [
        Publish("lobby", p.Left("lobby", "ann", WALL)),
        Reply(1, p.Left_("lobby")),
    ]
    assert not core.is_member(1, "lobby")
    assert core.members("lobby") == ["bob"]
    # The nick is free again in that room.
    connect(core, 3)
    assert not _errors(join(core, 3, "lobby", "ANN"))


def test_leave_last_member_removes_room(core: ChatCore) -> None:
    connect(core, 1)
    join(core, 1, "lobby")
    effects = core.handle(1, p.Leave("lobby"))
    assert effects[-1] == Reply(1, p.Left_("lobby"))
    assert core.member_counts() == {}


def test_leave_when_not_a_member(core: ChatCore) -> None:
    connect(core, 1)
    err = only_error(core.handle(1, p.Leave("lobby")), 1)
    assert err.code == p.E_NOT_IN_ROOM
    assert err.ref == "leave"


def test_disconnect_leaves_every_room(core: ChatCore) -> None:
    connect(core, 1, 2, 3)
    join(core, 1, "red", "ann")
    join(core, 1, "blue")
    join(core, 1, "solo")
    join(core, 2, "red", "bob")
    join(core, 3, "blue", "carol")
    effects = core.disconnect(1)
    assert effects == [
        Publish("blue", p.Left("blue", "ann", WALL)),
        Publish("red", p.Left("red", "ann", WALL)),
    ]
    assert core.member_counts() == {"red": 1, "blue": 1}
    assert "solo" not in core.member_counts()
    assert core.nick_of(1) is None
    assert list(core.fds()) == [2, 3]
    assert core.handle(1, p.Ping()) == []
    # Disconnect twice is harmless.
    assert core.disconnect(1) == []


def test_live_fds_exclude_members_until_mark_live(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby")
    assert core.live_fds("lobby") == ()
    assert core.mark_live(1, "lobby") is True
    assert core.live_fds("lobby") == (1,)
    join(core, 2, "lobby")
    assert core.live_fds("lobby") == (1,)
    assert core.mark_live(2, "lobby") is True
    assert sorted(core.live_fds("lobby")) == [1, 2]
    core.handle(1, p.Leave("lobby"))
    assert core.live_fds("lobby") == (2,)
    assert core.mark_live(1, "lobby") is False
    assert core.mark_live(2, "nowhere") is False
    assert core.live_fds("nowhere") == ()


def test_live_fds_after_rejoin_waits_for_mark_live(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 2, "lobby")
    join(core, 1, "lobby")
    core.mark_live(1, "lobby")
    core.handle(1, p.Leave("lobby"))
    join(core, 1, "lobby")
    assert 1 not in core.live_fds("lobby")


def test_member_counts(core: ChatCore) -> None:
    connect(core, 1, 2, 3)
    assert core.member_counts() == {}
    join(core, 1, "a")
    join(core, 2, "a")
    join(core, 3, "b")
    join(core, 1, "b")
    assert core.member_counts() == {"a": 2, "b": 2}
    core.disconnect(2)
    assert core.member_counts() == {"a": 1, "b": 2}


def test_who_returns_members_sorted(core: ChatCore) -> None:
    connect(core, 1, 2, 3, 4)
    for fd, nick in [(1, "zed"), (2, "Amy"), (3, "bob"), (4, "amos")]:
        join(core, fd, "lobby", nick)
    assert core.handle(1, p.Who("lobby")) == [
        Reply(1, p.Members("lobby", ["amos", "Amy", "bob", "zed"], 4))
    ]
    assert core.handle(1, p.Who("empty")) == [Reply(1, p.Members("empty", [], 0))]


def test_history_rooms_and_ping(core: ChatCore) -> None:
    connect(core, 1)
    assert core.handle(1, p.History("lobby", 10, 5)) == [LoadHistory(1, "lobby", 10, 5)]
    assert core.handle(1, p.ListRooms()) == [RoomsQuery(1)]
    assert core.handle(1, p.Ping("p1")) == [Reply(1, p.Pong("p1", WALL))]


def test_error_from_protocol_error(core: ChatCore) -> None:
    connect(core, 1)
    exc = p.ProtocolError(p.E_UNKNOWN_TYPE, "unknown frame type 'x'", "x")
    assert core.error(1, exc) == [
        Reply(1, p.Error(p.E_UNKNOWN_TYPE, "unknown frame type 'x'", "x"))
    ]
    bad = p.ProtocolError(p.E_BAD_FRAME, p.NICK_RULE, "nick", "nick")
    assert core.error(1, bad) == [
        Reply(1, p.Error(p.E_BAD_FRAME, p.NICK_RULE, "nick", field="nick"))
    ]


# ---------------------------------------------------------------------------
# deleting a room


def test_a_closing_room_refuses_joins_and_sends_until_reopened(core: ChatCore) -> None:
    connect(core, 1, 2)
    join(core, 1, "lobby", "ann")
    core.close_room("lobby")
    err = only_error(core.handle(1, p.Send("lobby", "c1", "hi")), 1)
    assert (err.code, err.ref, err.id) == (p.E_UNAVAILABLE, "send", "c1")
    assert "being deleted" in err.message
    err = only_error(core.handle(2, p.Join("lobby", nick="bob")), 2)
    assert (err.code, err.ref, err.room) == (p.E_UNAVAILABLE, "join", "lobby")
    assert core.members("lobby") == ["ann"] and core.sessions[2].nick == "user-2"
    # Other rooms are not affected.
    assert any(isinstance(e, Catchup) for e in join(core, 2, "other", "bob"))
    core.reopen_room("lobby")
    assert core.handle(1, p.Send("lobby", "c1", "hi")) == [Persist(1, "lobby", "c1", "ann", "hi")]


def test_remove_room_tells_every_member_and_forgets_the_room(core: ChatCore) -> None:
    connect(core, 1, 2, 3)
    join(core, 2, "lobby", "bob")
    join(core, 1, "lobby", "ann")
    join(core, 1, "other", "ann")
    join(core, 3, "other", "cat")
    assert core.remove_room("lobby") == [
        Reply(1, p.Left_("lobby", reason="deleted")),
        Reply(2, p.Left_("lobby", reason="deleted")),
    ]
    assert "lobby" not in core.member_counts() and core.live_fds("lobby") == ()
    assert core.sessions[1].rooms == {"other"} and core.sessions[2].rooms == set()
    assert only_error(core.handle(1, p.Send("lobby", "c", "x")), 1).code == p.E_NOT_IN_ROOM
    assert core.remove_room("lobby") == []
    # Joining again is a fresh join; disconnecting later publishes nothing for lobby.
    assert any(isinstance(e, Catchup) for e in join(core, 2, "lobby", "bob"))
    assert core.members("lobby") == ["bob"]
    assert core.disconnect(1) == [Publish("other", p.Left("other", "ann", WALL))]


# ---------------------------------------------------------------------------
# rate limiting


def test_rate_limit_with_fake_clock(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=2, burst=3), clock=clock, wallclock=lambda: WALL)
    connect(core, 1)
    for i in range(3):
        assert core.handle(1, p.Ping(str(i))) == [Reply(1, p.Pong(str(i), WALL))]
    err = only_error(core.handle(1, p.Ping("4")), 1)
    assert err.code == p.E_RATE_LIMITED == "rate_limited"
    assert "retry" in err.message
    assert "0.50" in err.message
    assert err.ref == "ping"
    assert err.id == "4"
    clock.advance(0.5)
    assert core.handle(1, p.Ping("5")) == [Reply(1, p.Pong("5", WALL))]
    assert only_error(core.handle(1, p.Ping("6")), 1).code == p.E_RATE_LIMITED


def test_rate_limited_frame_has_no_effect(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=1, burst=1), clock=clock)
    connect(core, 1)
    core.handle(1, p.Ping())
    err = only_error(core.handle(1, p.Join("lobby")), 1)
    assert err.code == p.E_RATE_LIMITED
    assert err.room == "lobby"
    assert not core.is_member(1, "lobby")


def test_rate_limit_is_per_connection(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=1, burst=2), clock=clock)
    connect(core, 1, 2)
    core.handle(1, p.Ping())
    core.handle(1, p.Ping())
    assert only_error(core.handle(1, p.Ping()), 1).code == p.E_RATE_LIMITED
    assert isinstance(core.handle(2, p.Ping())[0].frame, p.Pong)  # type: ignore[union-attr]


def test_rate_zero_never_limits(core: ChatCore) -> None:
    connect(core, 1)
    for _ in range(1000):
        assert isinstance(core.handle(1, p.Ping())[0].frame, p.Pong)  # type: ignore[union-attr]


def _errors(effects: list[Effect]) -> list[p.Error]:
    return [e.frame for e in effects if isinstance(e, Reply) and isinstance(e.frame, p.Error)]


# ---------------------------------------------------------------------------
# invalid frames: every frame costs a token; a connection that keeps sending
# invalid ones is closed (1008)


def bad_json() -> p.ProtocolError:
    return p.ProtocolError(p.E_BAD_JSON, "invalid JSON")


def test_invalid_frames_take_a_token_like_valid_ones(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=1, burst=2), clock=clock, wallclock=lambda: WALL)
    core.connect(1)
    assert only_error(core.error(1, bad_json()), 1).code == p.E_BAD_JSON
    assert only_error(core.not_text(1), 1).code == p.E_NOT_TEXT
    # The bucket is empty now: the next valid frame is refused too.
    assert only_error(core.handle(1, p.Ping("x")), 1).code == p.E_RATE_LIMITED
    err = only_error(core.error(1, bad_json()), 1)
    assert err.code == p.E_RATE_LIMITED and "retry in" in err.message
    clock.advance(1.0)
    assert core.handle(1, p.Ping("x")) == [Reply(1, p.Pong("x", WALL))]


def test_too_many_invalid_frames_close_the_connection_with_1008(clock: FakeClock) -> None:
    limits = ChatLimits(rate=0, max_invalid_frames=3, invalid_frame_window=30.0)
    core = ChatCore(limits, clock=clock, wallclock=lambda: WALL)
    core.connect(1)
    for _ in range(3):
        assert only_error(core.error(1, bad_json()), 1).code == p.E_BAD_JSON
    assert core.not_text(1) == [Close(1, 1008, "too many invalid frames")]
    assert core.error(1, bad_json()) == [Close(1, 1008, "too many invalid frames")]


def test_invalid_frames_are_forgiven_over_the_window(clock: FakeClock) -> None:
    limits = ChatLimits(rate=0, max_invalid_frames=3, invalid_frame_window=30.0)
    core = ChatCore(limits, clock=clock, wallclock=lambda: WALL)
    core.connect(1)
    # One invalid frame every 10 s (the refill rate: 3 per 30 s) is never closed.
    for _ in range(20):
        assert only_error(core.error(1, bad_json()), 1).code == p.E_BAD_JSON
        clock.advance(10.0)


def test_a_garbage_sender_does_not_affect_a_well_behaved_client(clock: FakeClock) -> None:
    limits = ChatLimits(rate=10, burst=20, max_invalid_frames=5, invalid_frame_window=60.0)
    core = ChatCore(limits, clock=clock, wallclock=lambda: WALL)
    core.connect(1)
    core.connect(2)
    closed_at = None
    for i in range(100):
        effects = core.error(1, bad_json())
        if effects == [Close(1, 1008, "too many invalid frames")]:
            closed_at = i
            break
        assert core.handle(2, p.Ping(str(i))) == [Reply(2, p.Pong(str(i), WALL))]
        clock.advance(0.1)  # the good client stays within its rate
    assert closed_at == 5
    core.disconnect(1)
    assert core.handle(2, p.Ping("after")) == [Reply(2, p.Pong("after", WALL))]


def test_invalid_frames_of_an_unknown_connection_do_nothing(core: ChatCore) -> None:
    assert core.error(9, bad_json()) == []
    assert core.not_text(9) == []


def test_max_invalid_frames_0_never_closes(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=0, max_invalid_frames=0), clock=clock)
    core.connect(1)
    for _ in range(100):
        assert only_error(core.error(1, bad_json()), 1).code == p.E_BAD_JSON


# ---------------------------------------------------------------------------
# room creation: per connection (token bucket) and server-wide (max_rooms)


def test_creating_rooms_is_rate_limited_per_connection(clock: FakeClock) -> None:
    limits = ChatLimits(rate=0, room_create_rate=0.5, room_create_burst=2)
    core = ChatCore(limits, clock=clock, wallclock=lambda: WALL)
    connect(core, 1, 2)
    assert isinstance(join(core, 1, "a")[-1], Catchup)
    assert isinstance(join(core, 1, "b")[-1], Catchup)
    err = only_error(join(core, 1, "c"), 1)
    assert err.code == p.E_RATE_LIMITED and "new rooms" in err.message and err.room == "c"
    assert "c" not in core.rooms and not core.room_exists("c")
    # Joining rooms that exist costs nothing, and other connections have their own bucket.
    assert isinstance(join(core, 2, "a")[-1], Catchup)
    assert isinstance(join(core, 2, "c")[-1], Catchup)
    core.handle(1, p.Leave("a"))
    assert isinstance(join(core, 1, "a")[-1], Catchup)
    clock.advance(2.0)
    assert isinstance(join(core, 1, "d")[-1], Catchup)


def test_rooms_in_the_store_exist_without_members(clock: FakeClock) -> None:
    limits = ChatLimits(rate=0, room_create_rate=1, room_create_burst=1, max_rooms=3)
    core = ChatCore(limits, clock=clock, wallclock=lambda: WALL)
    core.load_rooms(["old1", "old2"])
    connect(core, 1)
    assert isinstance(join(core, 1, "old1")[-1], Catchup)  # no creation: no token
    assert isinstance(join(core, 1, "old2")[-1], Catchup)
    assert isinstance(join(core, 1, "new")[-1], Catchup)
    # The last member leaving does not delete the room: it still counts.
    core.handle(1, p.Leave("new"))
    assert core.room_exists("new") and core.known == ["new", "old1", "old2"]


def test_max_rooms_caps_the_rooms_of_the_server(clock: FakeClock) -> None:
    core = ChatCore(ChatLimits(rate=0, max_rooms=2), clock=clock, wallclock=lambda: WALL)
    connect(core, 1, 2)
    join(core, 1, "a")
    join(core, 2, "b")
    err = only_error(join(core, 1, "c"), 1)
    assert err.code == p.E_ROOM_LIMIT and "2 rooms" in err.message
    assert core.creation_refused("c") == (p.E_ROOM_LIMIT, err.message)
    assert core.creation_refused("a") is None  # existing rooms stay open
    assert isinstance(join(core, 1, "b")[-1], Catchup)
    core.remove_room("a")  # an operator deleted it: room for one more
    assert not core.room_exists("a")
    assert isinstance(join(core, 2, "c")[-1], Catchup)


def test_max_rooms_0_is_no_limit(clock: FakeClock) -> None:
    limits = ChatLimits(rate=0, max_rooms=0, room_create_rate=0, max_rooms_per_connection=300)
    core = ChatCore(limits, clock=clock)
    connect(core, 1)
    for i in range(300):
        assert isinstance(join(core, 1, f"r{i}")[-1], Catchup)
    assert len(core.known) == 300


def test_the_room_list_is_paged_from_the_rooms_that_exist(core: ChatCore) -> None:
    core.load_rooms(["b", "a", "d"])
    core.room_created("c")
    assert core.known_after(None, 2) == ["a", "b"]
    assert core.known_after("b", 5) == ["c", "d"]
    assert core.known_after("bb", 1) == ["c"]
    assert core.known_after("d", 5) == []
    connect(core, 1)
    assert core.handle(1, p.ListRooms(after="b", limit=3)) == [RoomsQuery(1, "b", 3)]
    assert core.handle(1, p.ListRooms()) == [RoomsQuery(1, None, p.ROOMS_PAGE_DEFAULT)]


def test_an_invalid_frame_window_of_0_counts_as_1_second(clock: FakeClock) -> None:
    limits = ChatLimits(rate=0, max_invalid_frames=2, invalid_frame_window=0.0)
    core = ChatCore(limits, clock=clock)
    core.connect(1)
    for _ in range(2):
        assert only_error(core.error(1, bad_json()), 1).code == p.E_BAD_JSON
    assert core.error(1, bad_json()) == [Close(1, 1008, "too many invalid frames")]
    clock.advance(0.5)  # one strike forgiven (2 per second)
    assert only_error(core.error(1, bad_json()), 1).code == p.E_BAD_JSON
