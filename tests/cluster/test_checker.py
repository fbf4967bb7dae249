"""The checker finds each kind of broken promise (and none in a correct run)."""

from __future__ import annotations

from .checker import ClientLog, Stored, check

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
