"""The hubbub.v1 wire schema: decoding client frames, validation errors, encoding server frames."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubbub import protocol as p


def _decode_error(obj: Any) -> p.ProtocolError:
    data = obj if isinstance(obj, str | bytes) else json.dumps(obj)
    with pytest.raises(p.ProtocolError) as info:
        p.decode(data)
    return info.value


# ---------------------------------------------------------------------------
# Valid client frames


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"type": "join", "room": "lobby"}, p.Join("lobby")),
        (
            {"type": "join", "room": "lobby", "nick": "ann", "since": 7, "epoch": "e1"},
            p.Join("lobby", nick="ann", since=7, epoch="e1"),
        ),
        ({"type": "leave", "room": "lobby"}, p.Leave("lobby")),
        ({"type": "send", "room": "lobby", "id": "c1", "text": "hi"}, p.Send("lobby", "c1", "hi")),
        ({"type": "nick", "nick": "ann"}, p.SetNick("ann")),
        (
            {"type": "dm", "room": "lobby", "to": "bob", "text": "psst"},
            p.Direct("lobby", "bob", "psst"),
        ),
        (
            {"type": "dm", "room": "lobby", "to": "bob", "text": "psst", "id": "d1"},
            p.Direct("lobby", "bob", "psst", id="d1"),
        ),
        ({"type": "typing", "room": "lobby"}, p.Typing("lobby", True)),
        ({"type": "typing", "room": "lobby", "active": False}, p.Typing("lobby", False)),
        ({"type": "history", "room": "lobby"}, p.History("lobby", None, 50)),
        (
            {"type": "history", "room": "lobby", "before": 10, "limit": 200},
            p.History("lobby", 10, 200),
        ),
        ({"type": "history", "room": "lobby", "limit": 1}, p.History("lobby", None, 1)),
        ({"type": "rooms"}, p.ListRooms()),
        ({"type": "who", "room": "lobby"}, p.Who("lobby")),
        ({"type": "ping"}, p.Ping()),
        ({"type": "ping", "id": "p1"}, p.Ping("p1")),
    ],
    ids=lambda v: v.get("type") if isinstance(v, dict) else "",
)
def test_valid_client_frames_decode_to_the_right_struct(
    frame: dict[str, Any], expected: p.ClientFrame
) -> None:
    decoded = p.decode(json.dumps(frame))
    assert type(decoded) is type(expected)
    assert decoded == expected
    # bytes input works too
    assert p.decode(json.dumps(frame).encode()) == expected


def test_every_client_type_is_covered_by_the_union() -> None:
    info = msgspec.inspect.type_info(p.ClientFrame)
    tags = {t.cls.__struct_config__.tag for t in info.types}
    assert tags == set(p.CLIENT_TYPES)


def test_room_names_at_the_limits_are_accepted() -> None:
    assert p.decode(json.dumps({"type": "who", "room": "a" * 64})).room == "a" * 64
    assert p.decode(json.dumps({"type": "who", "room": "A1_b.c-d"})).room == "A1_b.c-d"
    assert p.decode(json.dumps({"type": "nick", "nick": "n" * 32})).nick == "n" * 32
    text = "x" * 8000
    assert p.decode(json.dumps({"type": "send", "room": "r", "id": "1", "text": text})).text == text


# ---------------------------------------------------------------------------
# Errors without a usable type


@pytest.mark.parametrize("data", ["{bad", "", '{"type": "join",', b"\xff\xfe", "nul"])
def test_invalid_json_is_bad_json(data: str | bytes) -> None:
    err = _decode_error(data)
    assert err.code == p.E_BAD_JSON == "bad_json"
    assert err.ref is None
    assert "invalid JSON" in err.message
    assert str(err) == err.message


@pytest.mark.parametrize(
    "data",
    [
        "[1, 2]",
        '[{"type": "ping"}]',
        '{"room": "lobby"}',
        '"join"',
        "42",
        "null",
        '{"type": 5}',
    ],
)
def test_non_object_or_missing_type_is_bad_frame(data: str) -> None:
    err = _decode_error(data)
    assert err.code == p.E_BAD_FRAME == "bad_frame"
    assert err.ref is None
    assert "type" in err.message


@pytest.mark.parametrize("kind", ["nope", "message", "welcome", "JOIN"])
def test_unknown_type_is_unknown_type_with_ref(kind: str) -> None:
    err = _decode_error({"type": kind, "room": "lobby"})
    assert err.code == p.E_UNKNOWN_TYPE == "unknown_type"
    assert err.ref == kind
    assert kind in err.message


def test_unknown_type_ref_is_truncated() -> None:
    err = _decode_error({"type": "x" * 100})
    assert err.code == p.E_UNKNOWN_TYPE
    assert err.ref == "x" * 32


# ---------------------------------------------------------------------------
# Schema violations of a known type: bad_frame, ref = the type, message names the field


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        # wrong field types
        ({"type": "join", "room": 5}, "room"),
        ({"type": "join", "room": "lobby", "since": "3"}, "since"),
        ({"type": "join", "room": "lobby", "since": True}, "since"),
        ({"type": "join", "room": "lobby", "since": -1}, "since"),
        ({"type": "typing", "room": "lobby", "active": "yes"}, "active"),
        ({"type": "history", "room": "lobby", "limit": 1.5}, "limit"),
        ({"type": "send", "room": "lobby", "id": 1, "text": "hi"}, "id"),
        # missing required fields
        ({"type": "join"}, "room"),
        ({"type": "send", "room": "lobby", "text": "hi"}, "id"),
        ({"type": "send", "room": "lobby", "id": "c1"}, "text"),
        ({"type": "dm", "room": "lobby", "text": "hi"}, "to"),
        ({"type": "nick"}, "nick"),
        # unknown extra fields
        ({"type": "join", "room": "lobby", "colour": "red"}, "colour"),
        ({"type": "rooms", "filter": "x"}, "filter"),
        ({"type": "ping", "id": "p", "extra": 1}, "extra"),
        # room names
        ({"type": "join", "room": "a" * 65}, "room"),
        ({"type": "join", "room": "a b"}, "room"),
        ({"type": "join", "room": "-lobby"}, "room"),
        ({"type": "join", "room": ""}, "room"),
        ({"type": "send", "room": "bad room", "id": "1", "text": "hi"}, "room"),
        # nicknames
        ({"type": "nick", "nick": "n" * 33}, "nick"),
        ({"type": "nick", "nick": "ann smith"}, "nick"),
        ({"type": "nick", "nick": ""}, "nick"),
        ({"type": "join", "room": "lobby", "nick": "a b"}, "nick"),
        ({"type": "dm", "room": "lobby", "to": "x" * 33, "text": "hi"}, "to"),
        # text
        ({"type": "send", "room": "lobby", "id": "c1", "text": ""}, "text"),
        ({"type": "send", "room": "lobby", "id": "c1", "text": "x" * 8001}, "text"),
        ({"type": "dm", "room": "lobby", "to": "bob", "text": ""}, "text"),
        # history limit
        ({"type": "history", "room": "lobby", "limit": 0}, "limit"),
        ({"type": "history", "room": "lobby", "limit": 201}, "limit"),
        ({"type": "history", "room": "lobby", "before": -5}, "before"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_schema_violations_are_bad_frame_naming_the_field(
    frame: dict[str, Any], field: str
) -> None:
    err = _decode_error(frame)
    assert err.code == p.E_BAD_FRAME
    assert err.ref == frame["type"]
    assert err.field == field
    # In words: no regular expression, no msgspec type names or JSON paths.
    for jargon in ("regex", "\\", "`", "$.", "Expected", "[^", "Object "):
        assert jargon not in err.message, err.message
    rule = p.field_rules(p._TAGS[frame["type"]]).get(field)
    assert f"'{field}'" in err.message or err.message == rule, err.message


def test_a_bad_nickname_is_explained_in_words() -> None:
    err = _decode_error({"type": "nick", "nick": "bad nick!"})
    assert err.message == (
        "a nickname is 1-32 letters, digits, '.', '-' or '_' and starts with a letter or digit"
    )
    assert (err.code, err.ref, err.field) == (p.E_BAD_FRAME, "nick", "nick")
    assert _decode_error({"type": "join", "room": "a b"}).message == p.ROOM_RULE
    assert _decode_error({"type": "history", "room": "x", "limit": 0}).message == (
        "'limit' must be a whole number from 1 to 200"
    )
    assert _decode_error({"type": "send", "room": "x", "id": "1", "text": ""}).message == (
        "a message is 1-8000 characters"
    )
    assert _decode_error({"type": "send", "room": "x", "id": "", "text": "t"}).message == (
        "'id' must be 1-64 characters"
    )
    assert _decode_error({"type": "join"}).message == "'room' is required"
    assert _decode_error({"type": "join", "room": "x", "colour": 1}).message == (
        "unknown field 'colour'"
    )
    assert _decode_error({"type": "typing", "room": "x", "active": 1}).message == (
        "'active' must be true or false"
    )
    assert _decode_error([1]).message == "a frame must be a JSON object with a string 'type'"


def _constrained(tp: Any) -> bool:
    from typing import Annotated, get_args, get_origin

    if get_origin(tp) is Annotated:
        return any(isinstance(m, msgspec.Meta) for m in tp.__metadata__)
    return any(_constrained(a) for a in get_args(tp))


def test_every_constrained_field_has_a_rule_in_words() -> None:
    for struct in p._TAGS.values():
        rules = p.field_rules(struct)
        for info in msgspec.structs.fields(struct):
            if _constrained(info.type):
                rule = rules.get(info.encode_name)
                assert rule and "{" not in rule and "\\" not in rule, (struct, info.name)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join", "room": "lobby\n"},
        {"type": "who", "room": "lobby\n"},
        {"type": "nick", "nick": "ann\n"},
        {"type": "join", "room": "lobby", "nick": "ann\n"},
    ],
    ids=["join-room", "who-room", "nick", "join-nick"],
)
def test_trailing_newline_in_room_or_nick_is_rejected(frame: dict[str, Any]) -> None:
    # A newline is whitespace like the space that is refused; a pattern anchored
    # with ``$`` lets exactly one trailing "\n" through.
    err = _decode_error(frame)
    assert err.code == p.E_BAD_FRAME
    assert err.ref == frame["type"]


@given(
    room=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z"),
    text=st.text(min_size=1, max_size=200).filter(lambda s: len(s) <= 8000),
)
def test_any_valid_send_round_trips(room: str, text: str) -> None:
    frame = p.decode(json.dumps({"type": "send", "room": room, "id": "c", "text": text}))
    assert frame == p.Send(room, "c", text)


# ---------------------------------------------------------------------------
# Server frames


def _msg(**kw: Any) -> p.Message:
    base: dict[str, Any] = dict(
        room="lobby", seq=3, epoch="e", id="m", nick="ann", text="hi", ts=1.5, client_id="c"
    )
    base.update(kw)
    return p.Message(**base)


SERVER_FRAMES: list[tuple[str, Any]] = [
    ("welcome", p.Welcome(p.SUBPROTOCOL, 4, "user-4", {"rate": 20.0})),
    ("message", _msg()),
    ("ack", p.Ack("c", "lobby", 3, "e", "m", 1.5)),
    ("room", p.RoomState("lobby", "ann", "e", 3, ["ann", "bob"])),
    ("resumed", p.Resumed("lobby", "e", 1, 3, 2)),
    ("reset", p.Reset("lobby", "e", "retention", 9, 5)),
    ("joined", p.Joined("lobby", "ann", 1.0)),
    ("left", p.Left("lobby", "ann", 1.0)),
    ("renamed", p.Renamed("lobby", "ann", "anna", 1.0)),
    ("nick", p.NickSet("ann")),
    ("typing", p.TypingEvent("lobby", "ann", True)),
    ("dm", p.DirectMessage("lobby", "d", "bob", "psst", 1.0, sender="ann")),
    ("history", p.HistoryPage("lobby", "e", [_msg()], False)),
    ("rooms", p.RoomList([p.RoomInfo("lobby", 2, 3)])),
    ("members", p.Members("lobby", ["ann", "bob"])),
    ("presence", p.Presence("lobby", 2, 1.0, [p.Person("bob")], [p.Person("cat", "u-cat")])),
    ("left_room", p.Left_("lobby")),
    ("pong", p.Pong("p", 2.0)),
    ("error", p.Error(p.E_NICK_TAKEN, "taken", "join", "lobby")),
]


@pytest.mark.parametrize(("tag", "frame"), SERVER_FRAMES, ids=[t for t, _ in SERVER_FRAMES])
def test_encode_puts_the_type_first_class(tag: str, frame: Any) -> None:
    data = p.encode(frame)
    assert isinstance(data, bytes)
    obj = json.loads(data)
    assert obj["type"] == tag
    assert data.startswith(b'{"type":"' + tag.encode() + b'"')


def test_all_server_frame_types_are_tested() -> None:
    union_types = {t.cls for t in msgspec.inspect.type_info(p.ServerFrame).types}
    assert union_types == {type(frame) for _, frame in SERVER_FRAMES}


def test_encode_message_fields() -> None:
    obj = json.loads(p.encode(_msg()))
    assert obj == {
        "type": "message",
        "room": "lobby",
        "seq": 3,
        "epoch": "e",
        "id": "m",
        "nick": "ann",
        "text": "hi",
        "ts": 1.5,
        "client_id": "c",
    }


def test_encode_direct_message_sender_is_from() -> None:
    obj = json.loads(p.encode(p.DirectMessage("lobby", "d", "bob", "psst", 1.0, "c", sender="ann")))
    assert obj["type"] == "dm"
    assert obj["from"] == "ann"
    assert "sender" not in obj
    assert obj["to"] == "bob"
    assert obj["client_id"] == "c"


def test_encode_error_fields() -> None:
    obj = json.loads(p.encode(p.Error("nick_taken", "taken", ref="join", room="lobby", id="c1")))
    assert obj == {
        "type": "error",
        "code": "nick_taken",
        "message": "taken",
        "ref": "join",
        "room": "lobby",
        "id": "c1",
    }
    bare = json.loads(p.encode(p.Error("bad_json", "invalid JSON")))
    assert bare["type"] == "error" and bare["code"] == "bad_json"
    assert bare.get("ref") is None and bare.get("room") is None


def test_encode_history_page_nests_messages() -> None:
    page = p.HistoryPage("lobby", "e", [_msg(seq=1), _msg(seq=2)], True)
    obj = json.loads(p.encode(page))
    assert [m["seq"] for m in obj["messages"]] == [1, 2]
    assert all(m["type"] == "message" for m in obj["messages"])
    assert obj["has_more"] is True


def test_protocol_error_attributes() -> None:
    exc = p.ProtocolError("bad_frame", "nope", "join")
    assert (exc.code, exc.message, exc.ref, exc.field) == ("bad_frame", "nope", "join", None)
    assert str(exc) == "nope"


def test_encode_error_field_and_left_room_reason() -> None:
    err = json.loads(p.encode(p.Error("bad_frame", "words", ref="nick", field="nick")))
    assert err["field"] == "nick"
    assert json.loads(p.encode(p.Left_("lobby"))) == {"type": "left_room", "room": "lobby"}
    deleted = json.loads(p.encode(p.Left_("lobby", reason="deleted")))
    assert deleted == {"type": "left_room", "room": "lobby", "reason": "deleted"}


# ---------------------------------------------------------------------------
# Rules defined once; server frames as a client decodes them


def test_every_serverframe_type_round_trips_through_decode_server() -> None:
    assert {tag for tag, _ in SERVER_FRAMES} == p.SERVER_TYPES
    for _, frame in SERVER_FRAMES:
        assert p.decode_server(p.encode(frame)) == frame


def test_decode_server_ignores_unknown_types_and_fields_but_refuses_bad_frames() -> None:
    assert p.decode_server(b'{"type":"from_the_future","x":1}') is None
    assert p.decode_server(b'{"type":"nick","nick":"ann","extra":true}') == p.NickSet("ann")
    for bad in (b'{"type":"ack","id":"c"}', b"[1]", b"{", b'{"no":"type"}'):
        with pytest.raises(p.ProtocolError):
            p.decode_server(bad)


def test_client_frames_encode_without_defaults_and_decode_back() -> None:
    frames = [p.Join("lobby"), p.Join("lobby", "ann", 4, "e"), p.History("lobby", limit=20)]
    assert p.encode_client(frames[0]) == b'{"type":"join","room":"lobby"}'
    assert [p.decode(p.encode_client(f)) for f in frames] == frames


def test_the_limits_are_the_schemas_and_the_welcome_frame_carries_them() -> None:
    room, nick = "r" * p.MAX_ROOM, "n" * p.MAX_NICK
    assert p.decode(json.dumps({"type": "join", "room": room, "nick": nick})) == p.Join(room, nick)
    assert _decode_error({"type": "join", "room": room + "r"}).field == "room"
    assert _decode_error({"type": "nick", "nick": nick + "n"}).field == "nick"
    cid = "c" * p.MAX_CLIENT_ID
    assert _decode_error({"type": "send", "room": "r", "id": cid + "c", "text": "t"}).field == "id"
    assert _decode_error({"type": "send", "room": "r", "id": "c", "text": "t" * 8001}).field == (
        "text"
    )
    page = {"type": "history", "room": "r", "limit": p.HISTORY_PAGE_MAX}
    assert p.decode(json.dumps(page)) == p.History("r", limit=p.HISTORY_PAGE_MAX)
    assert _decode_error({**page, "limit": p.HISTORY_PAGE_MAX + 1}).field == "limit"
    assert p.History("r").limit == p.HISTORY_PAGE_DEFAULT
    limits = p.welcome_limits(65536, 20.0, 40.0, 50)
    assert limits == {
        "max_message_size": 65536,
        "rate": 20.0,
        "burst": 40.0,
        "max_rooms": 50,
        "history_page": 200,
        "max_text": 8000,
        "max_nick": 32,
        "max_room": 64,
        "max_client_id": 64,
    }
    welcome = json.loads(p.encode(p.Welcome(p.SUBPROTOCOL, 1, "user-1", limits)))
    assert welcome["rules"] == {"room": p.ROOM_RULE, "nick": p.NICK_RULE}
    assert "1-64 characters" in p.ROOM_RULE and "1-32 letters" in p.NICK_RULE


# ---------------------------------------------------------------------------
# Hostile frames: nothing but a frame or a ProtocolError comes out of decode


DEEP = 50_000


@pytest.mark.parametrize(
    "data",
    [
        "[" * DEEP,
        "{" + '"a":{' * DEEP,
        '{"type":"join","room":' + "[" * DEEP,
        '{"type":"join","x":' + "[" * DEEP,
        '{"x":' + "[" * DEEP + "]" * DEEP + ',"type":"join","room":"a"}',
        '{"type":"rooms","after":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}",
        ("[" * DEEP).encode(),
    ],
    ids=["arrays", "objects", "in-field", "unknown-field", "before-type", "closed", "bytes"],
)
def test_deep_nesting_is_a_bad_frame_not_a_recursion_error(data: str | bytes) -> None:
    err = _decode_error(data)
    assert err.code in (p.E_BAD_FRAME, p.E_BAD_JSON)
    assert err.message


def test_deep_nesting_names_the_rule() -> None:
    err = _decode_error('{"a":' * DEEP)
    assert err.code == p.E_BAD_FRAME and err.message == p.TOO_DEEP


@pytest.mark.parametrize("field", ["since", "before"])
@pytest.mark.parametrize("value", [2**53, 2**63, 2**64, 2**200, -1])
def test_sequence_numbers_are_bounded_to_what_javascript_holds(field: str, value: int) -> None:
    kind = "join" if field == "since" else "history"
    err = _decode_error(f'{{"type":"{kind}","room":"a","{field}":{value}}}')
    assert err.code == p.E_BAD_FRAME and err.field == field
    assert err.message == f"'{field}' must be a whole number from 0 to {2**53 - 1}"


def test_the_largest_sequence_number_is_accepted() -> None:
    assert p.decode(f'{{"type":"join","room":"a","since":{p.MAX_SEQ}}}') == p.Join(
        "a", since=p.MAX_SEQ
    )
    assert p.decode(f'{{"type":"history","room":"a","before":{p.MAX_SEQ}}}') == p.History(
        "a", before=p.MAX_SEQ
    )


def test_the_decoder_never_raises_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    class Boom:
        def decode(self, data: Any) -> Any:
            raise MemoryError("no")

    monkeypatch.setattr(p, "_decoder", Boom())
    err = _decode_error('{"type":"ping"}')
    assert err.code == p.E_BAD_JSON and "MemoryError" in err.message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        p.decode(data)
    except p.ProtocolError:
        pass


# ---------------------------------------------------------------------------
# Paged room list


def test_rooms_frame_pages_with_after_and_a_bounded_limit() -> None:
    assert p.decode('{"type":"rooms","after":"lobby","limit":5}') == p.ListRooms("lobby", 5)
    assert p.ListRooms().limit == p.ROOMS_PAGE_DEFAULT
    assert p.decode(json.dumps({"type": "rooms", "limit": p.ROOMS_PAGE_MAX})) == p.ListRooms(
        limit=p.ROOMS_PAGE_MAX
    )
    for limit in (0, p.ROOMS_PAGE_MAX + 1, 2**70):
        err = _decode_error({"type": "rooms", "limit": limit})
        assert err.field == "limit" and str(p.ROOMS_PAGE_MAX) in err.message
    assert _decode_error({"type": "rooms", "after": "bad room"}).field == "after"
    page = p.RoomList([p.RoomInfo("a", 1, 2)], next="a")
    assert json.loads(p.encode(page))["next"] == "a"
    assert json.loads(p.encode(p.RoomList([])))["next"] is None


# ---------------------------------------------------------------------------
# History pages bounded in bytes


def _page_msg(seq: int, text: str) -> p.Message:
    return p.Message("r", seq, "e", f"id{seq}", "ann", text, 1.0, None)


def test_fit_page_keeps_a_small_page_as_it_is() -> None:
    page = [_page_msg(i, "hi") for i in range(1, 51)]
    assert p.fit_page(page, False) == (page, False)
    assert p.fit_page(page, True) == (page, True)
    assert p.fit_page([], False) == ([], False)


def test_fit_page_cuts_the_oldest_messages_beyond_the_byte_budget() -> None:
    page = [_page_msg(i, "x" * p.MAX_TEXT) for i in range(1, 201)]  # ~1.6 MB encoded
    kept, has_more = p.fit_page(page, False)
    size = sum(len(p.encode(m)) for m in kept)
    assert has_more is True
    assert size <= p.HISTORY_PAGE_BYTES
    assert size + len(p.encode(page[0])) > p.HISTORY_PAGE_BYTES  # as many as fit
    assert kept == page[-len(kept) :]  # the newest, oldest first


def test_fit_page_counts_encoded_bytes_not_characters() -> None:
    # An escaped control character is 6 bytes on the wire, a CJK character 3.
    page = [_page_msg(i, "\x01" * 1000) for i in range(1, 11)]
    assert len(p.encode(page[0])) > 6000
    budget = sum(len(p.encode(m)) for m in page[-3:])
    kept, has_more = p.fit_page(page, False, max_bytes=budget)
    assert kept == page[-3:] and has_more


def test_fit_page_always_keeps_the_newest_message() -> None:
    page = [_page_msg(1, "a" * 100), _page_msg(2, "b" * 100)]
    assert p.fit_page(page, False, max_bytes=10) == ([page[1]], True)


# -- identities: user ids beside nicknames --------------------------------------


def test_frames_of_anonymous_connections_have_no_user_field() -> None:
    """--auth none: the frames are what they were before identities (no ``user``)."""
    for frame in (
        p.Welcome(p.SUBPROTOCOL, 4, "user-4"),
        _msg(),
        p.Joined("lobby", "ann", 1.0),
        p.Left("lobby", "ann", 1.0),
        p.Renamed("lobby", "ann", "anna", 1.0),
        p.TypingEvent("lobby", "ann", True),
        p.DirectMessage("lobby", "d", "bob", "psst", 1.0, sender="ann"),
        p.Members("lobby", ["ann"]),
        p.RoomState("lobby", "ann", "e", 3, ["ann"]),
    ):
        obj = json.loads(p.encode(frame))
        assert "user" not in obj and "users" not in obj and "to_user" not in obj, obj


def test_frames_carry_the_user_id_when_there_is_one() -> None:
    assert json.loads(p.encode(p.Welcome(p.SUBPROTOCOL, 4, "Ann", user="u1")))["user"] == "u1"
    assert json.loads(p.encode(p.Joined("lobby", "Ann", 1.0, user="u1")))["user"] == "u1"
    assert json.loads(p.encode(_msg(user="u1")))["user"] == "u1"
    dm = json.loads(
        p.encode(p.DirectMessage("l", "d", "bob", "x", 1.0, sender="ann", user="u1", to_user="u2"))
    )
    assert (dm["from"], dm["user"], dm["to"], dm["to_user"]) == ("ann", "u1", "bob", "u2")
    who = json.loads(p.encode(p.Members("l", ["Ann", "x"], 2, False, users={"Ann": "u1"})))
    assert who["users"] == {"Ann": "u1"} and who["count"] == 2 and who["has_more"] is False


def test_presence_frame_encodes_people_and_round_trips() -> None:
    frame = p.Presence(
        "lobby",
        3,
        1.0,
        joined=[p.Person("Ann", "u1"), p.Person("user-7")],
        left=[p.Person("bob")],
        renamed=[p.Rename("cat", "kat", "u3")],
    )
    obj = json.loads(p.encode(frame))
    assert obj["joined"] == [{"nick": "Ann", "user": "u1"}, {"nick": "user-7"}]
    assert obj["renamed"] == [{"old": "cat", "nick": "kat", "user": "u3"}]
    assert obj["large"] is False and obj["count"] == 3
    assert p.decode_server(p.encode(frame)) == frame


def test_who_pages_decode_and_are_bounded() -> None:
    assert p.decode('{"type":"who","room":"l","after":"ann","limit":10}') == p.Who("l", "ann", 10)
    assert p.decode('{"type":"who","room":"l"}') == p.Who("l")
    err = _decode_error({"type": "who", "room": "l", "limit": p.MEMBERS_PAGE_MAX + 1})
    assert err.code == p.E_BAD_FRAME and err.field == "limit"
    err = _decode_error({"type": "who", "room": "l", "limit": 0})
    assert err.field == "limit"
