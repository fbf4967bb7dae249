"""The checker finds each kind of broken promise (and none in a correct run)."""

from __future__ import annotations

from .checker import ClientLog, MemberView, Stored, check, check_presence

E = "e1"


def history(n: int) -> list[Stored]:
    return [Stored(E, i, f"c-{i}", f"t{i}") for i in range(1, n + 1)]


def log_of(name: str, received: list[Stored], acked: dict[str, tuple[str, int]]) -> ClientLog:
    log = ClientLog(name)
    log.received = list(received)
    log.acked = dict(acked)
    log.sent = list(acked)
    return log


def test_a_correct_run_has_no_problem():
    h = history(5)
    logs = [log_of("a", h, {"c-1": (E, 1), "c-3": (E, 3)}), log_of("b", h[2:], {})]
    assert check(logs, h) == []


def test_an_acked_message_missing_from_the_history_is_found():
    h = history(3)
    problems = check([log_of("a", h, {"c-9": (E, 4)})], h)
    assert problems == ["a: acked 'c-9' (e1, 4) is not in the history"]


def test_an_ack_with_another_seq_than_stored_is_found():
    h = history(3)
    assert check([log_of("a", h, {"c-2": (E, 3)})], h) == [
        "a: 'c-2' was acked as (e1, 3) but stored as (e1, 2)"
    ]


def test_a_client_id_stored_twice_is_found():
    h = [*history(2), Stored(E, 3, "c-1", "again")]
    assert "client id 'c-1' is stored twice" in check([], h)


def test_gaps_duplicates_and_disagreements_of_a_receiver_are_found():
    h = history(4)
    gap = log_of("gap", [h[0], h[2]], {})
    dup = log_of("dup", [h[0], h[1], h[1]], {})
    liar = log_of("liar", [h[0], Stored(E, 2, "c-2", "forged")], {})
    phantom = log_of("phantom", [Stored(E, 9, "x", "y")], {})
    problems = check([gap, dup, liar, phantom], h)
    assert problems == [
        "gap: seq 3 after 1 in e1: a gap",
        "dup: seq 2 after 2 in e1: a duplicate or reorder",
        "liar: received Stored(epoch='e1', seq=2, client_id='c-2', text='forged') but the "
        "history has Stored(epoch='e1', seq=2, client_id='c-2', text='t2')",
        "phantom: received (e1, 9), which is not stored",
    ]


def test_frames_are_logged_as_received():
    log = ClientLog("a")
    log.on_frame({"type": "message", "epoch": E, "seq": 1, "client_id": "c-1", "text": "t1"})
    log.on_frame({"type": "ack", "id": "c-1", "epoch": E, "seq": 1})
    log.on_frame({"type": "joined", "room": "r", "nick": "x"})
    assert log.received == [Stored(E, 1, "c-1", "t1")] and log.acked == {"c-1": (E, 1)}


# -- presence -------------------------------------------------------------------------


def view_of(*frames: dict[str, object], room: str = "r") -> MemberView:
    view = MemberView(room)
    for f in frames:
        view.on_frame(f)
    return view


def room_frame(nick: str, *members: str) -> dict[str, object]:
    return {"type": "room", "room": "r", "nick": nick, "members": list(members),
            "count": len(members), "epoch": E, "seq": 0}  # fmt: skip


def presence(count: int, joined=(), left=(), renamed=()) -> dict[str, object]:
    return {"type": "presence", "room": "r", "count": count, "ts": 0.0,
            "joined": [{"nick": n} for n in joined], "left": [{"nick": n} for n in left],
            "renamed": [{"old": o, "nick": n} for o, n in renamed]}  # fmt: skip


CONNECTED = {"a": "ann", "b": "bob", "c": "cat"}


def test_views_that_list_exactly_the_connected_clients_have_no_problem():
    views = {
        "a": view_of(
            room_frame("ann", "ann", "bob"), {"type": "joined", "room": "r", "nick": "cat"}
        ),
        "b": view_of(room_frame("bob", "bob"), presence(3, joined=["Ann", "cat"])),
        "c": view_of(room_frame("cat", "ann", "bob", "cat")),
    }
    views["c"].on_frame({"type": "members", "room": "r", "members": ["ann", "bob", "cat"],
                         "count": 3})  # fmt: skip
    assert views["a"].count == 3 and views["c"].who == ["ann", "bob", "cat"]
    assert check_presence(views, CONNECTED) == []


def test_a_ghost_is_found():
    # dan left, but a's list never heard it (a lost leave).
    views = {"a": view_of(room_frame("ann", "ann", "bob", "cat", "dan"))}
    assert check_presence(views, CONNECTED) == [
        "a: ghost(s) ['dan'] listed but not connected",
        "a: count 4, but 3 are connected",
    ]


def test_a_missing_member_is_found():
    views = {"b": view_of(room_frame("bob", "ann", "bob", "cat"), presence(2, left=["cat"]))}
    assert check_presence(views, CONNECTED) == [
        "b: ['cat'] connected but not listed (missing)",
        "b: count 2, but 3 are connected",
    ]


def test_a_who_answer_is_checked_on_its_own():
    view = view_of(room_frame("ann", "ann", "bob", "cat"))
    view.on_frame({"type": "members", "room": "r", "members": ["ann", "bob", "bob", "eve"],
                   "count": 4})  # fmt: skip
    assert check_presence({"a": view}, CONNECTED) == [
        "a: who answer lists a nickname twice: ['ann', 'bob', 'bob', 'eve']",
        "a's who answer: ghost(s) ['eve'] listed but not connected",
        "a's who answer: ['cat'] connected but not listed (missing)",
        "a's who answer: count 4, but 3 are connected",
    ]


def test_a_nickname_held_by_two_clients_and_a_client_out_of_the_room_are_found():
    both = {"a": "ann", "b": "ANN"}
    views = {"a": view_of(room_frame("ann", "ann")), "b": view_of(room_frame("ANN", "ann"))}
    views["b"].on_frame({"type": "left_room", "room": "r"})
    assert check_presence(views, both) == [
        "nickname 'ann' is held by 2 clients: ['a', 'b']",
        "b: not in the room",
    ]


def test_a_presence_frame_is_applied_as_one_step_as_the_protocol_says():
    # Two members swap nicknames in one tick; one leaves, one joins; case is folded.
    view = view_of(
        room_frame("ann", "ann", "bob", "cat"),
        presence(3, left=["CAT"], renamed=[("ann", "bob"), ("bob", "ann")], joined=["dan"]),
        {"type": "left", "room": "r", "nick": "nobody"},  # idempotent: nothing changes
        {"type": "renamed", "room": "r", "old": "dan", "nick": "dee"},
        {"type": "joined", "room": "other", "nick": "eve"},  # another room: ignored
        {"type": "nick", "nick": "annie"},
    )
    assert sorted(view.members.values()) == ["ann", "bob", "dee"]
    assert view.count == 3 and view.nick == "annie" and view.joined
    view.lost()
    assert not view.joined and view.members == {} and view.count is None
