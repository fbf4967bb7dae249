"""The per-room sequencer without sockets: a fake clock, a fake store."""

from __future__ import annotations

import asyncio

import pytest

from hubbub import protocol as p
from hubbub.apps.sequencer import Sequencer
from hubbub.store import StoreError


def msg(room: str, seq: int) -> p.Message:
    return p.Message(room, seq, "e1", f"id{seq}", "ann", f"t{seq}", 1.0)


class FakeStore:
    def __init__(self, last: int = 0) -> None:
        self.messages: dict[str, list[p.Message]] = {}
        self.last = last
        self.reads: list[tuple[str, int, int]] = []
        self.fail = False

    def add(self, room: str, upto: int) -> None:
        have = self.messages.setdefault(room, [])
        for seq in range(len(have) + 1, upto + 1):
            have.append(msg(room, seq))

    async def since(self, room: str, after: int, limit: int) -> list[p.Message]:
        self.reads.append((room, after, limit))
        if self.fail:
            raise StoreError("database gone")
        return [m for m in self.messages.get(room, []) if m.seq > after][:limit]

    async def position(self, room: str) -> int:
        have = self.messages.get(room, [])
        return have[-1].seq if have else 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(store: FakeStore, **kw):
    out: list[tuple[str, int]] = []
    clock = Clock()
    seq = Sequencer(
        lambda room, payload, s: out.append((room, s)),
        store.since,
        store.position,
        clock=clock,
        hold_timeout=0.25,
        **kw,
    )
    return seq, out, clock


def payload(room: str, seq: int) -> bytes:
    return p.encode(msg(room, seq))


async def test_in_order_frames_pass_and_repeats_and_old_frames_are_dropped():
    store = FakeStore()
    store.add("r", 3)
    s, out, _ = make(store)
    await s.ready("r")
    assert s.cursor("r") == 3
    for seq in (2, 3, 4, 4, 5, 3):
        s.feed("r", seq, payload("r", seq))
    assert out == [("r", 4), ("r", 5)]
    assert s.dropped == 4


async def test_a_frame_beyond_the_cursor_is_held_until_the_hole_fills():
    store = FakeStore()
    s, out, clock = make(store)
    await s.ready("r")
    s.feed("r", 2, payload("r", 2))
    s.feed("r", 3, payload("r", 3))
    assert out == [] and s.due() == []
    s.feed("r", 1, payload("r", 1))  # the other publisher's frame arrives late
    assert out == [("r", 1), ("r", 2), ("r", 3)]
    clock.now += 10
    assert s.due() == []  # no hole left


async def test_a_hole_not_filled_in_time_is_read_from_the_store():
    store = FakeStore()
    s, out, clock = make(store)
    await s.ready("r")
    store.add("r", 4)  # 1..4 committed; the broker lost 1 and 2
    s.feed("r", 3, payload("r", 3))
    s.feed("r", 4, payload("r", 4))
    clock.now += 0.2
    assert s.due() == []
    clock.now += 0.1
    assert s.due() == ["r"]
    await s.backfill("r")
    assert out == [("r", 1), ("r", 2), ("r", 3), ("r", 4)]
    assert s.due() == [] and s.cursor("r") == 4
    s.feed("r", 2, payload("r", 2))  # the lost frame turns up after all: dropped
    assert len(out) == 4


async def test_a_lost_last_message_is_found_by_the_position_check():
    store = FakeStore()
    s, out, _clock = make(store)
    await s.ready("r")
    store.add("r", 1)  # committed elsewhere; its frame never arrives
    s.position("r", 1, urgent=True)  # after a broker reconnect
    assert s.due() == ["r"]
    await s.backfill("r")
    assert out == [("r", 1)]
    s.position("r", 1)
    assert s.due() == []


async def test_frames_before_the_position_is_known_are_held_then_filtered():
    store = FakeStore()
    store.add("r", 5)
    gate = asyncio.Event()

    async def slow_position(room: str) -> int:
        await gate.wait()
        return 5

    out: list[tuple[str, int]] = []
    s = Sequencer(lambda r, b, q: out.append((r, q)), store.since, slow_position, clock=Clock())
    ready = asyncio.ensure_future(s.ready("r"))
    await asyncio.sleep(0)
    for seq in (5, 7, 6):
        s.feed("r", seq, payload("r", seq))
    assert out == []
    gate.set()
    await ready
    assert out == [("r", 6), ("r", 7)]


async def test_a_store_that_fails_is_retried_and_frames_keep_waiting():
    store = FakeStore()
    s, out, clock = make(store)
    await s.ready("r")
    store.add("r", 2)
    s.feed("r", 2, payload("r", 2))
    store.fail = True
    clock.now += 1
    await s.backfill("r")
    assert out == [] and s.due() == []  # retried later, not at once
    store.fail = False
    clock.now += 2
    assert s.due() == ["r"]
    await s.backfill("r")
    assert out == [("r", 1), ("r", 2)]


async def test_messages_deleted_before_the_backfill_are_skipped_not_waited_for():
    store = FakeStore()
    s, out, _clock = make(store)
    await s.ready("r")
    store.add("r", 5)
    del store.messages["r"][:3]  # retention took 1..3
    s.position("r", 5, urgent=True)
    await s.backfill("r")
    assert out == [("r", 4), ("r", 5)] and s.skipped == 3


async def test_a_long_backfill_reads_in_pages():
    store = FakeStore()
    s, out, _clock = make(store, page=10)
    await s.ready("r")
    store.add("r", 25)
    s.position("r", 25, urgent=True)
    await s.backfill("r")
    assert [q for _, q in out] == list(range(1, 26))
    assert [after for _, after, _ in store.reads] == [0, 10, 20]


async def test_held_frames_are_bounded():
    store = FakeStore()
    s, out, clock = make(store, max_held=5)
    await s.ready("r")
    for seq in range(2, 100):
        s.feed("r", seq, payload("r", seq))
    assert len(s.rooms["r"].held) == 5
    store.add("r", 99)
    clock.now += 1
    await s.backfill("r")
    assert [q for _, q in out] == list(range(1, 100))


async def test_reach_waits_for_the_cursor_and_forget_stops_following():
    store = FakeStore()
    s, out, _clock = make(store)
    await s.ready("r")
    waiter = asyncio.ensure_future(s.reach("r", 2))
    await asyncio.sleep(0)
    assert not waiter.done()
    s.feed("r", 1, payload("r", 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    s.feed("r", 2, payload("r", 2))
    await asyncio.wait_for(waiter, 1)
    other = asyncio.ensure_future(s.reach("r", 9))
    await asyncio.sleep(0)
    s.forget("r")
    with pytest.raises(StoreError):
        await asyncio.wait_for(other, 1)
    s.feed("r", 3, payload("r", 3))  # not followed any more: ignored
    assert out == [("r", 1), ("r", 2)]


async def test_untracked_rooms_are_ignored_and_rooms_are_independent():
    store = FakeStore()
    s, out, _clock = make(store)
    await s.ready("a")
    s.feed("b", 1, payload("b", 1))
    s.feed("a", 1, payload("a", 1))
    assert out == [("a", 1)]


async def test_a_cancelled_first_ready_does_not_fail_a_second_one():
    # Two members join at once; the first one's read of the position is cancelled
    # (it left, or closed): the second one still gets the room followed.
    store = FakeStore()
    store.add("r", 3)
    gate = asyncio.Event()
    calls = 0

    async def position(room: str) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        return await store.position(room)

    seq = Sequencer(lambda room, payload, s: None, store.since, position)
    first = asyncio.ensure_future(seq.ready("r"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(seq.ready("r"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 2)  # not StoreError("cancelled")
    assert first.cancelled()
    assert seq.cursor("r") == 3
    await seq.reach("r", 3)


async def test_on_hole_is_called_when_a_hole_opens_and_has_holes_until_it_is_filled():
    """The app checks due() only while there is a hole (an idle node sets no timer)."""
    store = FakeStore()
    calls: list[int] = []
    s, out, clock = make(store, on_hole=lambda: calls.append(1))
    await s.ready("r")
    s.feed("r", 1, payload("r", 1))
    assert calls == [] and not s.has_holes()  # in order: nothing to watch
    store.add("r", 3)
    s.feed("r", 3, payload("r", 3))  # 2 is missing
    assert calls and s.has_holes()
    clock.now += 1
    assert s.due() == ["r"]
    await s.backfill("r")
    assert out == [("r", 1), ("r", 2), ("r", 3)]
    assert s.due() == []
    assert not s.has_holes()
