"""The Store contract, run against every implementation (``backend`` in conftest.py).

What one store promises, every store promises: the PostgreSQL store is held to
exactly what the SQLite store does. A test that only one implementation can
pass belongs in that implementation's own test file.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys

import msgspec
import pytest

from hubbub.protocol import Message
from hubbub.store import PendingMessage, Store, StoreError
from tests.services import ROOT

from .conftest import Backend

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX12 = re.compile(r"[0-9a-f]{12}")


def pm(
    room: str, client_id: str | None = None, text: str = "hi", ts: float = 1000.0
) -> PendingMessage:
    return PendingMessage(room, client_id, "ann", text, ts)


async def fill(store: Store, room: str, n: int, ts: float = 1000.0) -> None:
    await store.append([pm(room, f"{room}-{i}", f"m{i}", ts) for i in range(1, n + 1)])


async def meta(store: Store, room: str) -> tuple[int, int]:
    m = await store.room(room)
    assert m is not None, f"room {room!r} should exist"
    return m.seq, m.oldest


# ---------------------------------------------------------------------------
# numbering


async def test_numbering_is_per_room_gapless_from_one(store: Store) -> None:
    first = await store.append([pm("a", "1"), pm("b", "1"), pm("a", "2"), pm("a", None)])
    assert [(m.room, m.seq, dup) for m, dup in first] == [
        ("a", 1, False),
        ("b", 1, False),
        ("a", 2, False),
        ("a", 3, False),
    ]
    more = await store.append([pm("b", "2"), pm("c", None), pm("a", "3")])
    assert [(m.room, m.seq) for m, _ in more] == [("b", 2), ("c", 1), ("a", 4)]
    every = [m for m, _ in first + more]
    for room in ("a", "b", "c"):
        room_meta = await store.room(room)
        assert room_meta is not None
        assert {m.epoch for m in every if m.room == room} == {room_meta.epoch}
        assert HEX12.fullmatch(room_meta.epoch)
    assert len({m.epoch for m in every}) == 3  # each room its own epoch
    assert all(HEX32.fullmatch(m.id) for m in every)
    assert len({m.id for m in every}) == 7


async def test_stored_message_is_what_append_returned(store: Store) -> None:
    [(msg, dup)] = await store.append([PendingMessage("lobby", "c1", "bob", "héllo ✓ 🎉", 12.5)])
    [(bare, _)] = await store.append([PendingMessage("lobby", None, "ann", "", 1795594455.78125)])
    assert not dup
    assert (msg.room, msg.seq, msg.client_id, msg.nick, msg.text, msg.ts) == (
        "lobby",
        1,
        "c1",
        "bob",
        "héllo ✓ 🎉",
        12.5,
    )
    assert (bare.client_id, bare.text, bare.ts) == (None, "", 1795594455.78125)
    assert await store.since("lobby", 0, 10) == [msg, bare]
    assert await store.page("lobby", None, 10) == ([msg, bare], False)


async def test_empty_batch_creates_nothing(store: Store) -> None:
    assert await store.append([]) == []
    assert await store.rooms() == []


# ---------------------------------------------------------------------------
# duplicates


async def test_duplicate_client_id_in_the_same_batch(store: Store) -> None:
    results = await store.append([pm("a", "x", "first"), pm("a", "x", "second"), pm("a", "y")])
    (first, d1), (again, d2), (y, d3) = results
    assert (d1, d2, d3) == (False, True, False)
    assert again == first
    assert y.seq == 2  # the duplicate took no sequence number
    stored = await store.since("a", 0, 100)
    assert [(m.seq, m.client_id, m.text) for m in stored] == [(1, "x", "first"), (2, "y", "hi")]


async def test_duplicate_client_id_in_a_later_batch(store: Store) -> None:
    [(orig, _)] = await store.append([pm("a", "x", "first")])
    results = await store.append([pm("a", "z"), pm("a", "x", "retry"), pm("b", "x")])
    (z, dz), (dup, dd), (bx, db) = results
    assert (dz, dd, db) == (False, True, False)
    assert dup == orig
    assert z.seq == 2
    assert (bx.room, bx.seq) == ("b", 1)  # client ids are per room
    assert [m.text for m in await store.since("a", 0, 100)] == ["first", "hi"]
    assert await meta(store, "a") == (2, 1)


async def test_messages_without_client_id_are_never_duplicates(store: Store) -> None:
    results = await store.append([pm("a", None), pm("a", None)])
    assert [dup for _, dup in results] == [False, False]
    [(third, dup)] = await store.append([pm("a", None)])
    assert (third.seq, dup) == (3, False)


# ---------------------------------------------------------------------------
# user ids (a token's ``sub``): kept when the sender had one, absent otherwise


def _users(msgs: list[Message]) -> list[tuple[int, str | None]]:
    return [(m.seq, m.user if m.user is not msgspec.UNSET else None) for m in msgs]


async def test_user_id_is_kept_through_every_read(backend: Backend) -> None:
    s = backend.make()
    await s.open()
    try:
        batch = [
            PendingMessage("lobby", "c1", "ann", "hi", 1.0, user="u-ann"),
            PendingMessage("lobby", "c2", "bob", "yo", 2.0),
            PendingMessage("lobby", None, "ann", "again", 3.0, user="u-ann"),
            PendingMessage("lobby", "c1", "ann", "retry in the batch", 4.0, user="u-ann"),
        ]
        out = await s.append(batch)
        assert [(m.seq, dup) for m, dup in out] == [(1, False), (2, False), (3, False), (1, True)]
        assert _users([m for m, _ in out]) == [(1, "u-ann"), (2, None), (3, "u-ann"), (1, "u-ann")]
        stored = [m for m, dup in out if not dup]
        # An anonymous sender's message has no "user" field at all (--auth none frames
        # are byte-identical to what they were before user ids).
        anon = stored[1]
        assert msgspec.json.encode(anon) == msgspec.json.encode(
            Message(anon.room, 2, anon.epoch, anon.id, "bob", "yo", 2.0, "c2")
        )
        assert b'"user"' not in msgspec.json.encode(anon)
        assert b'"user":"u-ann"' in msgspec.json.encode(stored[0])

        assert await s.since("lobby", 0, 10) == stored
        assert await s.page("lobby", None, 10) == (stored, False)
        assert await s.page("lobby", 3, 1) == ([stored[1]], True)
        # A retry in a later batch (the client resends after a lost ack): the stored
        # message, with its user id (or without one), not the retry's.
        again = await s.append(
            [
                PendingMessage("lobby", "c1", "ann", "retry", 5.0, user="u-other"),
                PendingMessage("lobby", "c2", "bob", "retry", 5.0, user="u-bob"),
            ]
        )
        assert again == [(stored[0], True), (stored[1], True)]
    finally:
        await s.close()
    s2 = backend.make()  # and after a restart
    await s2.open()
    try:
        assert await s2.since("lobby", 0, 10) == stored
        [(dup, was_dup)] = await s2.append([PendingMessage("lobby", "c1", "ann", "x", 6.0)])
        assert (dup, was_dup) == (stored[0], True)
    finally:
        await s2.close()


# ---------------------------------------------------------------------------
# rooms


async def test_reading_a_missing_room_never_creates_it(store: Store) -> None:
    assert await store.room("nowhere") is None
    assert await store.since("nowhere", 0, 10) == []
    assert await store.page("nowhere", None, 10) == ([], False)
    assert await store.rooms() == []
    assert await store.room("nowhere") is None


async def test_create_room_is_idempotent(store: Store) -> None:
    created = await store.create_room("lobby")
    assert (created.name, created.seq, created.oldest) == ("lobby", 0, 1)
    assert HEX12.fullmatch(created.epoch)
    again = await store.create_room("lobby")
    assert again == created
    assert await store.room("lobby") == created
    [(msg, _)] = await store.append([pm("lobby")])
    assert (msg.seq, msg.epoch) == (1, created.epoch)
    after = await store.create_room("lobby")
    assert (after.epoch, after.seq, after.oldest) == (created.epoch, 1, 1)


async def test_append_creates_its_rooms(store: Store) -> None:
    [(msg, _)] = await store.append([pm("new")])
    room_meta = await store.room("new")
    assert room_meta is not None
    assert (room_meta.epoch, room_meta.seq, room_meta.oldest) == (msg.epoch, 1, 1)


async def test_rooms_lists_every_room_in_name_byte_order(store: Store) -> None:
    await fill(store, "zeta", 1)
    await fill(store, "alpha", 3)
    await store.create_room("empty")
    await store.create_room("Zed")
    await store.create_room("émile")
    rooms = await store.rooms()
    assert [(r.name, r.seq, r.oldest) for r in rooms] == [
        ("Zed", 0, 1),
        ("alpha", 3, 1),
        ("empty", 0, 1),
        ("zeta", 1, 1),
        ("émile", 0, 1),
    ]
    assert rooms[1] == await store.room("alpha")


async def test_delete_room(store: Store) -> None:
    await fill(store, "a", 3)
    await fill(store, "b", 2)
    old = await store.room("a")
    assert old is not None
    assert await store.delete_room("a") is True
    assert await store.room("a") is None
    assert await store.since("a", 0, 10) == []
    assert [r.name for r in await store.rooms()] == ["b"]
    assert await store.delete_room("a") is False
    assert await store.delete_room("never") is False
    # Created again: a new epoch, numbering from 1, the old client ids forgotten.
    [(msg, dup)] = await store.append([pm("a", "a-1")])
    assert (msg.seq, dup) == (1, False)
    assert msg.epoch != old.epoch
    assert [m.seq for m in await store.since("b", 0, 10)] == [1, 2]


# ---------------------------------------------------------------------------
# reads


async def test_since(store: Store) -> None:
    await fill(store, "a", 6)
    await fill(store, "b", 2)
    assert [m.seq for m in await store.since("a", 2, 100)] == [3, 4, 5, 6]
    assert [m.seq for m in await store.since("a", 2, 2)] == [3, 4]
    assert [m.seq for m in await store.since("a", 0, 100)] == [1, 2, 3, 4, 5, 6]
    assert await store.since("a", 6, 100) == []
    assert {m.room for m in await store.since("a", 0, 100)} == {"a"}


async def test_pages_walk_back_to_the_start(store: Store) -> None:
    await fill(store, "a", 5)
    await fill(store, "b", 3)
    msgs, more = await store.page("a", None, 2)
    assert ([m.seq for m in msgs], more) == ([4, 5], True)
    msgs, more = await store.page("a", msgs[0].seq, 2)
    assert ([m.seq for m in msgs], more) == ([2, 3], True)
    msgs, more = await store.page("a", msgs[0].seq, 2)
    assert ([m.seq for m in msgs], more) == ([1], False)
    assert await store.page("a", 1, 2) == ([], False)
    msgs, more = await store.page("a", None, 5)  # an exact fit has no more
    assert ([m.seq for m in msgs], more) == ([1, 2, 3, 4, 5], False)
    msgs, more = await store.page("a", 100, 2)  # a bound past the end
    assert ([m.seq for m in msgs], more) == ([4, 5], True)


# ---------------------------------------------------------------------------
# reset and retention


async def test_reset_starts_a_new_epoch(store: Store) -> None:
    await fill(store, "a", 3)
    await fill(store, "b", 2)
    old = await store.room("a")
    assert old is not None
    new = await store.reset("a")
    assert new.epoch != old.epoch
    assert HEX12.fullmatch(new.epoch)
    assert (new.name, new.seq, new.oldest) == ("a", 0, 1)
    assert await store.room("a") == new
    assert await store.since("a", 0, 10) == []
    [(msg, dup)] = await store.append([pm("a", "a-1")])  # the old client ids are gone too
    assert (msg.seq, msg.epoch, dup) == (1, new.epoch, False)
    assert [m.seq for m in await store.since("b", 0, 10)] == [1, 2]


async def test_reset_of_a_missing_room_creates_it_empty(store: Store) -> None:
    new = await store.reset("fresh")
    assert (new.seq, new.oldest) == (0, 1)
    assert await store.room("fresh") == new


async def test_retention_by_count(store: Store) -> None:
    await fill(store, "a", 5)
    await fill(store, "b", 2)
    assert await store.enforce_retention(max_count=3, max_age=0, now=2000.0) == 2
    assert [m.seq for m in await store.since("a", 0, 100)] == [3, 4, 5]
    assert [m.seq for m in await store.since("b", 0, 100)] == [1, 2]
    assert await meta(store, "a") == (5, 3)
    assert await meta(store, "b") == (2, 1)
    [(msg, _)] = await store.append([pm("a", "later")])  # numbering goes on
    assert msg.seq == 6
    assert await store.enforce_retention(max_count=3, max_age=0, now=2000.0) == 1
    assert await meta(store, "a") == (6, 4)
    msgs, more = await store.page("a", None, 3)
    assert ([m.seq for m in msgs], more) == ([4, 5, 6], False)


async def test_retention_by_age(store: Store) -> None:
    await store.append([pm("a", None, "old", ts=100.0), pm("a", None, "old2", ts=150.0)])
    await store.append([pm("a", None, "new", ts=950.0), pm("b", None, "ancient", ts=1.0)])
    assert await store.enforce_retention(max_count=0, max_age=100.0, now=1000.0) == 3
    assert [m.text for m in await store.since("a", 0, 100)] == ["new"]
    assert await store.since("b", 0, 100) == []
    assert await meta(store, "a") == (3, 3)
    assert await meta(store, "b") == (1, 2)  # empty: oldest = seq + 1, the room stays
    [(msg, _)] = await store.append([pm("b")])
    assert msg.seq == 2


async def test_retention_without_limits_deletes_nothing(store: Store) -> None:
    await fill(store, "a", 5, ts=0.0)
    assert await store.enforce_retention(max_count=0, max_age=0, now=1e9) == 0
    assert len(await store.since("a", 0, 100)) == 5


# ---------------------------------------------------------------------------
# lifecycle: reopen, crash, closed


async def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    s1 = backend.make()
    await s1.open()
    await fill(s1, "a", 3)
    await fill(s1, "b", 1)
    await fill(s1, "gone", 1)
    await s1.delete_room("gone")
    reset = await s1.reset("b")
    await s1.create_room("empty")
    before = await s1.since("a", 0, 10)
    rooms_before = await s1.rooms()
    await s1.close()

    s2 = backend.make()
    await s2.open()
    try:
        assert await s2.rooms() == rooms_before
        assert await s2.since("a", 0, 10) == before
        assert await s2.room("gone") is None
        assert (await s2.room("b")) == reset
        [(msg, dup)] = await s2.append([pm("a", "new")])
        assert (msg.seq, msg.epoch, dup) == (4, before[0].epoch, False)
        [(dup_msg, dup)] = await s2.append([pm("a", "a-2")])  # dedup survives the restart
        assert dup and dup_msg == before[1]
        [(msg_b, _)] = await s2.append([pm("b")])
        assert (msg_b.seq, msg_b.epoch) == (1, reset.epoch)
    finally:
        await s2.close()


CRASH_WRITER = """
import asyncio, json, sys
from hubbub.store import PendingMessage
from tests.services import make_store

async def main():
    store = make_store(json.loads(sys.argv[1]))
    await store.open()
    for n in range(1, 100_000):
        batch = [PendingMessage("crash", f"c{n}-{i}", "w", f"t{n}-{i}", float(n)) for i in range(5)]
        results = await store.append(batch)
        print(json.dumps([[m.seq, m.client_id] for m, _ in results]), flush=True)

asyncio.run(main())
"""


async def test_acknowledged_appends_survive_a_crash(backend: Backend) -> None:
    """A writer killed with SIGKILL mid-traffic: every batch it saw committed is there,
    numbering is gapless, and a new process carries on where it stopped."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH_WRITER,
        json.dumps(backend.spec),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    acked: list[list[list[object]]] = []
    try:
        while len(acked) < 20:
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            if not line:
                err = await child.stderr.read() if child.stderr else b""
                pytest.fail(f"writer died: {err.decode(errors='replace')}")
            acked.append(json.loads(line))
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        rest, _ = await asyncio.wait_for(child.communicate(), 30)
    # Lines written before the kill are acknowledged too (a torn last line is not).
    for line in rest.decode().splitlines():
        try:
            acked.append(json.loads(line))
        except json.JSONDecodeError:
            break
    assert child.returncode == -signal.SIGKILL

    store = backend.make()
    await store.open()
    try:
        stored = await store.since("crash", 0, 1_000_000)
        assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
        by_cid = {m.client_id: m.seq for m in stored}
        assert len(by_cid) == len(stored)
        acked_pairs = [(seq, cid) for batch in acked for seq, cid in batch]
        assert len(stored) >= len(acked_pairs) >= 100
        for seq, cid in acked_pairs:
            assert by_cid[cid] == seq
        [(msg, dup)] = await store.append([pm("crash", "after")])
        assert (msg.seq, dup) == (len(stored) + 1, False)
    finally:
        await store.close()


async def test_closed_store_refuses_work(backend: Backend) -> None:
    s = backend.make()
    with pytest.raises(StoreError, match="not open"):
        await s.append([pm("a")])
    await s.open()
    await s.close()
    await s.close()  # idempotent
    calls = [
        lambda: s.since("a", 0, 1),
        lambda: s.page("a", None, 1),
        lambda: s.room("a"),
        lambda: s.create_room("a"),
        lambda: s.delete_room("a"),
        lambda: s.reset("a"),
        lambda: s.rooms(),
        lambda: s.enforce_retention(1, 0, 0.0),
        lambda: s.append([pm("a")]),
        lambda: s.set_private("a", True),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="not open"):
            await call()
    with pytest.raises(StoreError, match="not open"):
        async with s.leader("job"):
            pass


# ---------------------------------------------------------------------------
# random interleavings (seeded: the same on every run and every backend)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_batches_keep_numbering_and_client_ids(backend: Backend, seed: int) -> None:
    rng = random.Random(seed)
    rooms = ("r0", "r1", "r2")
    store = backend.make()
    await store.open()
    try:
        first: dict[tuple[str, str], str] = {}  # (room, client id) -> text first stored
        count = dict.fromkeys(rooms, 0)
        n = 0
        reopen_at = rng.randrange(10)
        for b in range(12):
            if b == reopen_at:
                await store.close()
                store = backend.make()
                await store.open()
            pending = []
            for _ in range(rng.randrange(9)):
                n += 1
                cid = rng.choice([None, *(f"c{i}" for i in range(8))])
                pending.append(PendingMessage(rng.choice(rooms), cid, "nick", f"t{n}", float(n)))
            results = await store.append(pending)
            assert len(results) == len(pending)
            for p_msg, (msg, dup) in zip(pending, results, strict=True):
                assert msg.room == p_msg.room
                key = (p_msg.room, p_msg.client_id) if p_msg.client_id else None
                if key is not None and key in first:
                    assert dup
                    assert (msg.text, msg.client_id) == (first[key], p_msg.client_id)
                else:
                    assert not dup
                    count[p_msg.room] += 1
                    assert (msg.seq, msg.text) == (count[p_msg.room], p_msg.text)
                    if key is not None:
                        first[key] = p_msg.text
        for room in rooms:
            stored = await store.since(room, 0, 10_000)
            assert [m.seq for m in stored] == list(range(1, count[room] + 1))
            cids = [m.client_id for m in stored if m.client_id is not None]
            assert len(cids) == len(set(cids))
            assert {(room, c) for c in cids} == {k for k in first if k[0] == room}
            assert len({m.epoch for m in stored}) <= 1
            if count[room]:
                assert await meta(store, room) == (count[room], 1)
    finally:
        await store.close()


async def test_rooms_pages_in_name_byte_order(store: Store) -> None:
    names = ["b", "B", "a", "c", "a"]
    await store.append([PendingMessage(n, None, "ann", "hi", 1000.0) for n in names])
    assert [(r.name, r.seq) for r in await store.rooms(None, 2)] == [("B", 1), ("a", 2)]
    assert [r.name for r in await store.rooms("a", 2)] == ["b", "c"]
    assert [r.name for r in await store.rooms("aa", 5)] == ["b", "c"]
    assert await store.rooms("c", 5) == []
    assert (await store.rooms("B", 1))[0] == await store.room("a")
    assert [r.name for r in await store.rooms()] == ["B", "a", "b", "c"]


# ---------------------------------------------------------------------------
# private rooms


async def test_rooms_are_public_until_set_private(store: Store) -> None:
    await fill(store, "a", 2)
    await store.create_room("b")
    assert [(m.name, m.private) for m in await store.rooms()] == [("a", False), ("b", False)]
    assert await store.set_private("a", True)
    assert (await store.room("a")).private  # type: ignore[union-attr]
    assert (await store.create_room("a")).private
    assert not (await store.room("b")).private  # type: ignore[union-attr]
    assert [(m.name, m.private) for m in await store.rooms()] == [("a", True), ("b", False)]
    # Appending keeps the flag (the cached meta too).
    await fill(store, "a", 1)
    assert (await store.room("a")).private  # type: ignore[union-attr]
    assert await store.set_private("a", False)
    assert not (await store.room("a")).private  # type: ignore[union-attr]


async def test_set_private_of_a_missing_room_creates_nothing(store: Store) -> None:
    assert not await store.set_private("nowhere", True)
    assert await store.room("nowhere") is None
    assert await store.rooms() == []


async def test_private_survives_reset_not_delete(store: Store) -> None:
    await fill(store, "a", 2)
    await store.set_private("a", True)
    assert (await store.reset("a")).private
    assert (await store.room("a")).private  # type: ignore[union-attr]
    assert await store.delete_room("a")
    assert not (await store.create_room("a")).private


async def test_private_survives_reopen(backend: Backend) -> None:
    s1 = backend.make()
    await s1.open()
    await fill(s1, "a", 1)
    await s1.create_room("b")
    await s1.set_private("a", True)
    await s1.close()
    s2 = backend.make()
    await s2.open()
    try:
        assert [(m.name, m.private) for m in await s2.rooms()] == [("a", True), ("b", False)]
        assert (await s2.room("a")).private  # type: ignore[union-attr]
    finally:
        await s2.close()


# ---------------------------------------------------------------------------
# once-per-cluster jobs


async def test_leader_lock_is_exclusive_per_name_and_released(store: Store) -> None:
    async with store.leader("retention") as first:
        assert first
        async with store.leader("retention") as second:
            assert not second  # held: never waits, never both
        async with store.leader("other") as other:
            assert other  # names are independent
    async with store.leader("retention") as again:
        assert again  # released when the block ended


async def test_leader_lock_is_released_by_an_exception(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.leader("job") as leading:
            assert leading
            raise RuntimeError("the job failed")
    async with store.leader("job") as leading:
        assert leading


async def test_leader_lock_tasks_race_one_wins(store: Store) -> None:
    inside = 0
    most = 0
    wins = 0

    async def job() -> None:
        nonlocal inside, most, wins
        async with store.leader("race") as leading:
            if leading:
                wins += 1
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.05)
                inside -= 1

    await asyncio.gather(*(job() for _ in range(4)))
    assert most == 1 and wins >= 1


# ---------------------------------------------------------------------------
# schema migration from older versions (1: before private rooms, 2: before user ids)


async def _make_old(backend: Backend, version: int = 1) -> None:
    """A database at schema ``version`` holding room "old" with one message (client id
    "c1"); at version 2 and later, room "old" is private."""
    room = "INSERT INTO rooms (name, epoch, last_seq, created) VALUES ('old', 'abcdef012345', 1, 1)"
    message = (
        "INSERT INTO messages (room, seq, id, client_id, nick, text, ts) "
        "VALUES ('old', 1, '{}', 'c1', 'ann', 'hi', 1.0)".format("f" * 32)
    )
    private = "UPDATE rooms SET private = {} WHERE name = 'old'"
    if backend.spec["kind"] == "sqlite":
        import sqlite3

        from hubbub.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

        db = sqlite3.connect(backend.spec["path"])
        for step in SQLITE_MIGRATIONS[:version]:
            db.executescript(step)
        db.execute(room)
        db.execute(message)
        if version >= 2:
            db.execute(private.format(1))
        db.execute(f"PRAGMA user_version={version}")
        db.commit()
        db.close()
        return
    from hubbub.store.postgres import MIGRATIONS as PG_MIGRATIONS
    from tests.services import pg_connect

    schema = backend.spec["schema"]
    conn = await pg_connect()
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for step in PG_MIGRATIONS[:version]:
            await conn.execute(step)
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
        await conn.execute(room)
        await conn.execute(message)
        if version >= 2:
            await conn.execute(private.format("TRUE"))
    finally:
        await conn.close()


async def _make_v1(backend: Backend) -> None:
    await _make_old(backend, 1)


async def test_a_version_1_database_is_migrated_rooms_public(backend: Backend) -> None:
    await _make_v1(backend)
    s = backend.make()
    await s.open()
    try:
        old = await s.room("old")
        assert old is not None
        assert (old.epoch, old.seq, old.oldest, old.private) == ("abcdef012345", 1, 1, False)
        [msg] = await s.since("old", 0, 10)
        assert (msg.seq, msg.text, msg.client_id) == (1, "hi", "c1")
        assert await s.set_private("old", True)
        assert (await s.room("old")).private  # type: ignore[union-attr]
    finally:
        await s.close()


async def test_a_version_2_database_is_migrated_old_messages_without_user(
    backend: Backend,
) -> None:
    await _make_old(backend, 2)
    s = backend.make()
    await s.open()
    try:
        old = await s.room("old")
        assert old is not None
        assert (old.epoch, old.seq, old.oldest, old.private) == ("abcdef012345", 1, 1, True)
        [msg] = await s.since("old", 0, 10)
        assert (msg.seq, msg.text, msg.client_id, msg.user) == (1, "hi", "c1", msgspec.UNSET)
        [(dup, was_dup)] = await s.append([PendingMessage("old", "c1", "ann", "x", 2.0, "u-a")])
        assert (dup, was_dup) == (msg, True)
        [(new, _)] = await s.append([PendingMessage("old", "c2", "ann", "x", 2.0, user="u-a")])
        assert (new.seq, new.epoch, new.user) == (2, "abcdef012345", "u-a")
        assert await s.page("old", None, 10) == ([msg, new], False)
    finally:
        await s.close()
    s2 = backend.make()  # opened again: migrated once, nothing lost
    await s2.open()
    try:
        assert _users(await s2.since("old", 0, 10)) == [(1, None), (2, "u-a")]
    finally:
        await s2.close()
