"""Identities in the chat core: users, nickname ownership, lookalikes, room access."""

from __future__ import annotations

import json

import pytest

from hubbub import protocol as p
from hubbub.core import ChatCore, ChatLimits, Effect, Identity, LoadHistory, Persist, Publish, Reply

WALL = 1_700_000_000.0
CYRILLIC_ANN = "\u0410nn"  # Cyrillic capital A, then Latin "nn"
FULLWIDTH_ANN = "\uff21\uff4e\uff4e"


@pytest.fixture
def core() -> ChatCore:
    return ChatCore(ChatLimits(rate=0), clock=lambda: 100.0, wallclock=lambda: WALL)


def ann(**kw: object) -> Identity:
    return Identity("u-ann", "Ann", **kw)  # type: ignore[arg-type]


def frames(effects: list[Effect], kind: type) -> list:
    out = []
    for e in effects:
        frame = getattr(e, "frame", None)
        if isinstance(frame, kind):
            out.append(frame)
    return out


def error_code(effects: list[Effect]) -> str:
    (err,) = frames(effects, p.Error)
    return err.code


def welcome(effects: list[Effect]) -> p.Welcome:
    (w,) = frames(effects, p.Welcome)
    return w


# -- connecting --------------------------------------------------------------


def test_connect_with_identity_takes_the_token_name_and_tells_the_user(core: ChatCore) -> None:
    w = welcome(core.connect(1, identity=ann()))
    assert (w.nick, w.user) == ("Ann", "u-ann")
    assert core.nick_of(1) == "Ann" and core.user_of(1) == "u-ann"


def test_connect_without_name_uses_the_user_id_and_anonymous_has_no_user(core: ChatCore) -> None:
    assert welcome(core.connect(1, identity=Identity("bob"))).nick == "bob"
    anon = welcome(core.connect(2))
    assert anon.nick == "user-2" and "user" not in json.loads(p.encode(anon))


def test_a_name_that_is_not_a_valid_nick_falls_back(core: ChatCore) -> None:
    assert welcome(core.connect(1, identity=Identity("carol", "Carol Smith"))).nick == "carol"
    assert welcome(core.connect(2, identity=Identity("d@x.org", "D E"))).nick == "user-2"


def test_a_name_owned_by_another_user_falls_back(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.disconnect(1)
    assert welcome(core.connect(2, identity=Identity("u-other", "ann"))).nick == "u-other"
    assert welcome(core.connect(3, identity=Identity("u-3", CYRILLIC_ANN))).nick == "u-3"


# -- one member per user --------------------------------------------------------


def test_two_connections_of_one_user_are_one_member(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.connect(2, identity=ann())
    core.connect(3)
    core.handle(3, p.Join("lobby"))
    first = core.handle(1, p.Join("lobby"))
    assert [f.nick for f in frames(first, p.Joined)] == ["Ann"]
    assert frames(first, p.Joined)[0].user == "u-ann"
    second = core.handle(2, p.Join("lobby"))
    assert frames(second, p.Joined) == [] and frames(second, p.Error) == []
    assert core.members("lobby") == ["Ann", "user-3"]
    (who,) = frames(core.handle(3, p.Who("lobby")), p.Members)
    assert who.members == ["Ann", "user-3"] and who.count == 2 and who.users == {"Ann": "u-ann"}
    for fd in (1, 2, 3):
        core.mark_live(fd, "lobby")
    assert set(core.live_fds("lobby")) == {1, 2, 3}  # messages reach both devices
    assert frames(core.handle(1, p.Leave("lobby")), p.Left) == []
    assert core.members("lobby") == ["Ann", "user-3"]
    gone = core.disconnect(2)
    assert [(f.nick, f.user) for f in frames(gone, p.Left)] == [("Ann", "u-ann")]
    assert core.members("lobby") == ["user-3"]


def test_a_second_connection_gets_the_users_current_nick(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.handle(1, p.SetNick("Annie"))
    assert welcome(core.connect(2, identity=ann())).nick == "Annie"


def test_rename_reaches_every_connection_of_the_user(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.connect(2, identity=ann())
    core.handle(2, p.Join("dev"))
    out = core.handle(1, p.SetNick("Annie"))
    assert [(e.fd, e.frame) for e in out if isinstance(e, Reply)] == [
        (1, p.NickSet("Annie")),
        (2, p.NickSet("Annie")),
    ]
    (renamed,) = frames(out, p.Renamed)
    assert (renamed.room, renamed.old, renamed.nick, renamed.user) == (
        "dev",
        "Ann",
        "Annie",
        "u-ann",
    )
    assert core.nick_of(2) == "Annie" and core.members("dev") == ["Annie"]


def test_dm_reaches_every_connection_of_the_recipient_and_the_sender(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.connect(2, identity=ann())
    core.connect(3, identity=Identity("u-bob", "bob"))
    core.connect(4, identity=Identity("u-bob", "bob"))
    for fd in (1, 2, 3, 4):
        core.handle(fd, p.Join("lobby"))
    out = core.handle(3, p.Direct("lobby", "ANN", "psst", "d1"))
    assert [e.fd for e in out if isinstance(e, Reply)] == [1, 2, 3, 4]
    dm = frames(out, p.DirectMessage)[0]
    assert (dm.sender, dm.user, dm.to, dm.to_user) == ("bob", "u-bob", "Ann", "u-ann")
    assert error_code(core.handle(4, p.Direct("lobby", "bob", "me", "d2"))) == p.E_DM_SELF


def test_messages_and_typing_carry_the_user(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.connect(2)
    core.handle(1, p.Join("lobby"))
    core.handle(2, p.Join("lobby"))
    (persist,) = core.handle(1, p.Send("lobby", "c1", "hi"))
    assert isinstance(persist, Persist) and persist.user == "u-ann" and persist.nick == "Ann"
    (anon,) = core.handle(2, p.Send("lobby", "c2", "hi"))
    assert isinstance(anon, Persist) and anon.user is None
    (typing,) = frames(core.handle(1, p.Typing("lobby")), p.TypingEvent)
    assert typing.user == "u-ann"
    (anon_typing,) = frames(core.handle(2, p.Typing("lobby")), p.TypingEvent)
    assert "user" not in json.loads(p.encode(anon_typing))


# -- nicknames belong to their users ---------------------------------------------


def test_nobody_else_takes_an_owned_nick_while_the_owner_is_away(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.disconnect(1)  # Ann is away: her name stays hers
    core.connect(2)
    core.connect(3, identity=Identity("u-eve", "eve"))
    assert error_code(core.handle(2, p.SetNick("Ann"))) == p.E_NICK_TAKEN
    assert error_code(core.handle(3, p.SetNick("aNN"))) == p.E_NICK_TAKEN
    assert error_code(core.handle(3, p.Join("lobby", nick=CYRILLIC_ANN))) == p.E_NICK_CONFUSABLE
    assert core.nick_of(3) == "eve" and core.members("lobby") == []
    # Ann comes back with her nick, and may take a case variant of it.
    assert welcome(core.connect(4, identity=ann())).nick == "Ann"
    assert frames(core.handle(4, p.SetNick("ANN")), p.NickSet) == [p.NickSet("ANN")]


def test_a_renamed_user_keeps_its_token_name_and_its_new_nick(core: ChatCore) -> None:
    core.connect(1, identity=ann())
    core.handle(1, p.SetNick("Annie"))
    core.connect(2)
    assert error_code(core.handle(2, p.SetNick("Ann"))) == p.E_NICK_TAKEN
    assert error_code(core.handle(2, p.SetNick("annie"))) == p.E_NICK_TAKEN
    core.handle(1, p.SetNick("Anna"))  # "Annie" is released, "Ann" stays owned
    assert frames(core.handle(2, p.SetNick("Annie")), p.NickSet) == [p.NickSet("Annie")]
    assert error_code(core.handle(2, p.SetNick("Ann"))) == p.E_NICK_TAKEN


def test_the_owner_table_is_bounded_and_forgets_the_user_gone_longest() -> None:
    core = ChatCore(ChatLimits(rate=0, max_nick_owners=2), wallclock=lambda: WALL)
    core.connect(1, identity=ann())
    core.disconnect(1)
    core.connect(2, identity=Identity("u-bob", "bob"))  # stays connected
    core.connect(3, identity=Identity("u-cat", "cat"))
    core.disconnect(3)
    assert len(core.owners.users) == 2  # Ann, gone longest, was forgotten
    core.connect(4)
    assert frames(core.handle(4, p.SetNick("Ann")), p.NickSet) == [p.NickSet("Ann")]
    assert error_code(core.handle(4, p.SetNick("cat"))) == p.E_NICK_TAKEN
    core.connect(5, identity=Identity("u-dan", "dan"))  # bob is connected: cat goes
    assert set(core.owners.users) == {"u-bob", "u-dan"}


def test_guests_own_no_nickname(core: ChatCore) -> None:
    for fd in range(1, 4):
        guest = Identity(f"guest-{fd}", guest=True, can_write=False)
        assert welcome(core.connect(fd, identity=guest)).user == f"guest-{fd}"
    core.handle(1, p.SetNick("visitor"))
    core.disconnect(1)
    assert core.owners.users == {}  # nothing remembered, nothing owned
    core.connect(9)
    assert frames(core.handle(9, p.SetNick("visitor")), p.NickSet) == [p.NickSet("visitor")]
    core.handle(9, p.Join("lobby"))
    core.handle(2, p.Join("lobby"))
    assert error_code(core.handle(2, p.SetNick("visitor"))) == p.E_NICK_TAKEN  # held here


# -- lookalikes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taken", "wanted", "code"),
    [
        ("Ann", "ANN", p.E_NICK_TAKEN),
        ("Ann", CYRILLIC_ANN, p.E_NICK_CONFUSABLE),
        ("Ann", FULLWIDTH_ANN, p.E_NICK_CONFUSABLE),
        ("Oscar", "0scar", p.E_NICK_CONFUSABLE),
        ("Ian", "lan", p.E_NICK_CONFUSABLE),
        ("harm", "harrn", p.E_NICK_CONFUSABLE),
    ],
)
def test_lookalike_nicks_are_refused_in_a_room(
    core: ChatCore, taken: str, wanted: str, code: str
) -> None:
    core.connect(1)
    core.connect(2)
    core.handle(1, p.Join("lobby", nick=taken))
    assert error_code(core.handle(2, p.Join("lobby", nick=wanted))) == code
    core.handle(2, p.Join("dev"))
    core.handle(1, p.Join("dev"))
    assert error_code(core.handle(2, p.SetNick(wanted))) == code
    assert core.members("lobby") == [taken]


def test_different_nicks_are_not_lookalikes(core: ChatCore) -> None:
    core.connect(1)
    core.connect(2)
    core.handle(1, p.Join("lobby", nick="ali"))
    assert frames(core.handle(2, p.Join("lobby", nick="all")), p.Error) == []
    assert core.members("lobby") == ["ali", "all"]


def test_a_lookalike_of_ones_own_nick_is_fine(core: ChatCore) -> None:
    core.connect(1)
    core.handle(1, p.Join("lobby", nick="Ann"))
    assert frames(core.handle(1, p.SetNick(CYRILLIC_ANN)), p.NickSet) == [p.NickSet(CYRILLIC_ANN)]
    assert core.members("lobby") == [CYRILLIC_ANN]


def test_dm_finds_the_member_after_nfkc_and_casefold(core: ChatCore) -> None:
    core.connect(1)
    core.connect(2)
    core.handle(1, p.Join("lobby", nick="Ann"))
    core.handle(2, p.Join("lobby", nick="bob"))
    out = core.handle(2, p.Direct("lobby", FULLWIDTH_ANN, "hi"))
    assert [e.fd for e in out] == [1, 2]
    assert error_code(core.handle(2, p.Direct("lobby", CYRILLIC_ANN, "hi"))) == p.E_NO_SUCH_MEMBER


# -- room access ------------------------------------------------------------------


def test_join_only_the_rooms_the_token_allows(core: ChatCore) -> None:
    core.connect(1, identity=ann(rooms=frozenset({"lobby"})))
    assert error_code(core.handle(1, p.Join("dev"))) == p.E_FORBIDDEN
    assert core.members("dev") == [] and "dev" not in core.known
    assert frames(core.handle(1, p.Join("lobby")), p.Error) == []


def test_read_only_guests_cannot_send_dm_or_type(core: ChatCore) -> None:
    core.connect(1, identity=Identity("guest-1", guest=True, can_write=False))
    core.connect(2)
    core.handle(1, p.Join("lobby"))
    core.handle(2, p.Join("lobby"))
    assert error_code(core.handle(1, p.Send("lobby", "c", "hi"))) == p.E_READ_ONLY
    assert error_code(core.handle(1, p.Direct("lobby", "user-2", "hi"))) == p.E_READ_ONLY
    assert error_code(core.handle(1, p.Typing("lobby"))) == p.E_READ_ONLY
    assert isinstance(core.handle(1, p.History("lobby"))[0], LoadHistory)  # reading is fine


def test_private_rooms_history_and_members_are_for_members(core: ChatCore) -> None:
    core.set_private("secret", True)
    core.connect(1, identity=ann())
    core.connect(2, identity=ann())  # Ann's other device, not joined itself
    core.connect(3)
    core.handle(1, p.Join("secret"))
    assert error_code(core.handle(3, p.History("secret"))) == p.E_FORBIDDEN
    assert error_code(core.handle(3, p.Who("secret"))) == p.E_FORBIDDEN
    assert isinstance(core.handle(2, p.History("secret"))[0], LoadHistory)
    assert frames(core.handle(2, p.Who("secret")), p.Members)[0].members == ["Ann"]
    # A token that names the room is a member's, joined or not (as over HTTP).
    core.connect(4, identity=Identity("u-bob", "bob", rooms=frozenset({"secret"})))
    core.connect(5, identity=Identity("u-cat", "cat"))  # every room, but not a member
    assert isinstance(core.handle(4, p.History("secret"))[0], LoadHistory)
    assert error_code(core.handle(5, p.Who("secret"))) == p.E_FORBIDDEN
    assert core.may_read(Identity("u-bob", rooms=frozenset({"secret"})), "secret")
    assert not core.may_read(None, "secret") and core.may_read(None, "lobby")
    core.set_private("secret", False)
    assert frames(core.handle(3, p.Who("secret")), p.Members)[0].members == ["Ann"]


def test_anonymous_frames_are_unchanged(core: ChatCore) -> None:
    core.connect(1)
    core.connect(2)
    core.handle(1, p.Join("lobby"))
    out = core.handle(2, p.Join("lobby", nick="bob"))
    joined = [e for e in out if isinstance(e, Publish)]
    assert [p.encode(e.frame) for e in joined] == [
        b'{"type":"joined","room":"lobby","nick":"bob","ts":1700000000.0}'
    ]
