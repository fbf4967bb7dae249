"""The SQLite store against real database files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub.errors import StartupError
from hubbub.store import PendingMessage, StoreError
from hubbub.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreLocked


def pm(
    room: str, client_id: str | None = None, text: str = "hi", ts: float = 1000.0
) -> PendingMessage:
    return PendingMessage(room, client_id, "ann", text, ts)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hubbub.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    await s.open()
    yield s
    await s.close()


async def fill(store: SQLiteStore, room: str, n: int, ts: float = 1000.0) -> None:
    await store.append([pm(room, f"{room}-{i}", f"m{i}", ts) for i in range(1, n + 1)])


# ---------------------------------------------------------------------------
# append


async def test_append_assigns_seq_per_room(store: SQLiteStore) -> None:
    results = await store.append([pm("a", "1"), pm("b", "1"), pm("a", "2"), pm("a", None)])
    assert [(m.room, m.seq, dup) for m, dup in results] == [
        ("a", 1, False),
        ("b", 1, False),
        ("a", 2, False),
        ("a", 3, False),
    ]
    more = await store.append([pm("b", "2"), pm("c", None), pm("a", "3")])
    assert [(m.room, m.seq) for m, _ in more] == [("b", 2), ("c", 1), ("a", 4)]
    epochs = {m.room: set() for m, _ in results + more}
    for m, _ in results + more:
        epochs[m.room].add(m.epoch)
    for room, seen in epochs.items():
        assert seen == {(await store.room(room)).epoch}
    assert len({m.epoch for m, _ in results + more}) == 3  # each room its own epoch
    assert len({m.id for m, _ in results + more}) == 7


async def test_append_keeps_message_fields(store: SQLiteStore) -> None:
    [(msg, dup)] = await store.append([PendingMessage("lobby", "c1", "bob", "héllo ✓", 12.5)])
    assert not dup
    assert (msg.room, msg.seq, msg.client_id, msg.nick, msg.text, msg.ts) == (
        "lobby",
        1,
        "c1",
        "bob",
        "héllo ✓",
        12.5,
    )
    assert await store.since("lobby", 0, 10) == [msg]


async def test_room_meta_tracks_seq(store: SQLiteStore) -> None:
    empty = await store.create_room("lobby")
    assert (empty.name, empty.seq, empty.oldest) == ("lobby", 0, 1)
    await fill(store, "lobby", 4)
    meta = await store.room("lobby")
    assert (meta.seq, meta.oldest, meta.epoch) == (4, 1, empty.epoch)


async def test_duplicate_client_id_in_same_batch(store: SQLiteStore) -> None:
    results = await store.append([pm("a", "x", "first"), pm("a", "x", "second"), pm("a", "y")])
    (first, d1), (again, d2), (y, d3) = results
    assert (d1, d2, d3) == (False, True, False)
    assert again == first
    assert again.text == "first"
    assert y.seq == 2  # the duplicate took no sequence number
    stored = await store.since("a", 0, 100)
    assert [(m.seq, m.client_id, m.text) for m in stored] == [(1, "x", "first"), (2, "y", "hi")]


async def test_duplicate_client_id_in_later_batch(store: SQLiteStore) -> None:
    [(orig, _)] = await store.append([pm("a", "x", "first")])
    results = await store.append([pm("a", "z"), pm("a", "x", "retry"), pm("b", "x")])
    (z, dz), (dup, dd), (bx, db) = results
    assert (dz, dd, db) == (False, True, False)
    assert dup == orig
    assert z.seq == 2
    assert (bx.room, bx.seq) == ("b", 1)  # client ids are per room
    assert [m.text for m in await store.since("a", 0, 100)] == ["first", "hi"]
    assert (await store.room("a")).seq == 2


async def test_messages_without_client_id_are_never_duplicates(store: SQLiteStore) -> None:
    results = await store.append([pm("a", None), pm("a", None)])
    assert [dup for _, dup in results] == [False, False]
    results = await store.append([pm("a", None)])
    assert results[0][0].seq == 3


async def test_empty_batch(store: SQLiteStore) -> None:
    assert await store.append([]) == []
    assert await store.rooms() == []


async def test_survives_close_and_reopen(db_path: Path) -> None:
    s1 = SQLiteStore(db_path)
    await s1.open()
    await fill(s1, "a", 3)
    await fill(s1, "b", 1)
    before = await s1.since("a", 0, 10)
    epoch = (await s1.room("a")).epoch
    await s1.close()

    s2 = SQLiteStore(db_path)
    await s2.open()
    try:
        assert await s2.since("a", 0, 10) == before
        meta = await s2.room("a")
        assert (meta.epoch, meta.seq, meta.oldest) == (epoch, 3, 1)
        [(msg, dup)] = await s2.append([pm("a", "new")])
        assert (msg.seq, msg.epoch, dup) == (4, epoch, False)
        [(msg_b, _)] = await s2.append([pm("b", "new")])
        assert msg_b.seq == 2
        # Duplicate detection also survives the restart.
        [(dup_msg, dup)] = await s2.append([pm("a", "a-2")])
        assert dup and dup_msg == before[1]
    finally:
        await s2.close()


async def test_failed_batch_stores_nothing(store: SQLiteStore, db_path: Path) -> None:
    await fill(store, "b", 1)
    # Another writer puts a row where the store's next "b" message will go.
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute(
            "INSERT INTO messages (room, seq, id, client_id, nick, text, ts) "
            "VALUES ('b', 2, 'x', NULL, 'intruder', 'x', 0)"
        )
        with pytest.raises(StoreError):
            await store.append([pm("a", "a1"), pm("b", "b2")])
        # Nothing of the batch is stored, not even the new room "a".
        assert other.execute("SELECT COUNT(*) FROM messages WHERE room = 'a'").fetchone() == (0,)
        assert other.execute("SELECT COUNT(*) FROM rooms WHERE name = 'a'").fetchone() == (0,)
        other.execute("DELETE FROM messages WHERE id = 'x'")
    finally:
        other.close()
    results = await store.append([pm("a", "a1"), pm("b", "b2")])
    assert [(m.room, m.seq, dup) for m, dup in results] == [("a", 1, False), ("b", 2, False)]
    await store.close()
    reopened = SQLiteStore(db_path)
    await reopened.open()
    try:
        assert (await reopened.room("a")).seq == 1
        assert (await reopened.room("b")).seq == 2
    finally:
        await reopened.close()
    await store.open()


async def test_closed_store_refuses_work(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    with pytest.raises(StoreError):
        await s.append([pm("a")])
    await s.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError, match="not open"):
        await s.since("a", 0, 1)


def test_bad_synchronous_setting(db_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteStore(db_path, synchronous="sometimes")


# ---------------------------------------------------------------------------
# reads


async def test_since(store: SQLiteStore) -> None:
    await fill(store, "a", 6)
    await fill(store, "b", 2)
    assert [m.seq for m in await store.since("a", 2, 100)] == [3, 4, 5, 6]
    assert [m.seq for m in await store.since("a", 2, 2)] == [3, 4]
    assert [m.seq for m in await store.since("a", 0, 100)] == [1, 2, 3, 4, 5, 6]
    assert await store.since("a", 6, 100) == []
    assert all(m.room == "a" for m in await store.since("a", 0, 100))
    assert await store.since("nowhere", 0, 10) == []


async def test_page_walks_back_to_the_start(store: SQLiteStore) -> None:
    await fill(store, "a", 5)
    await fill(store, "b", 3)
    msgs, more = await store.page("a", None, 2)
    assert [m.seq for m in msgs] == [4, 5]
    assert more is True
    msgs, more = await store.page("a", msgs[0].seq, 2)
    assert [m.seq for m in msgs] == [2, 3]
    assert more is True
    msgs, more = await store.page("a", msgs[0].seq, 2)
    assert [m.seq for m in msgs] == [1]
    assert more is False
    assert await store.page("a", 1, 2) == ([], False)


async def test_page_exact_fit_has_no_more(store: SQLiteStore) -> None:
    await fill(store, "a", 4)
    msgs, more = await store.page("a", None, 4)
    assert [m.seq for m in msgs] == [1, 2, 3, 4]
    assert more is False
    msgs, more = await store.page("a", 3, 2)
    assert [m.seq for m in msgs] == [1, 2]
    assert more is False
    assert await store.page("empty", None, 10) == ([], False)


async def test_rooms_lists_rooms(store: SQLiteStore) -> None:
    await fill(store, "zeta", 1)
    await fill(store, "alpha", 3)
    await store.create_room("empty")  # a join creates its room before any message
    rooms = await store.rooms()
    assert [(r.name, r.seq) for r in rooms] == [("alpha", 3), ("empty", 0), ("zeta", 1)]


# ---------------------------------------------------------------------------
# reset and retention


async def test_reset_changes_epoch_and_restarts_seq(store: SQLiteStore) -> None:
    await fill(store, "a", 3)
    await fill(store, "b", 2)
    old = await store.room("a")
    meta = await store.reset("a")
    assert meta.epoch != old.epoch
    assert (meta.seq, meta.oldest) == (0, 1)
    assert await store.since("a", 0, 10) == []
    [(msg, dup)] = await store.append([pm("a", "a-1")])  # old client id is gone too
    assert (msg.seq, msg.epoch, dup) == (1, meta.epoch, False)
    assert (await store.room("a")).epoch == meta.epoch
    # Other rooms are untouched.
    assert [m.seq for m in await store.since("b", 0, 10)] == [1, 2]


async def test_reset_persists(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    await s.open()
    await fill(s, "a", 3)
    meta = await s.reset("a")
    await s.close()
    s = SQLiteStore(db_path)
    await s.open()
    try:
        again = await s.room("a")
        assert (again.epoch, again.seq, again.oldest) == (meta.epoch, 0, 1)
        [(msg, _)] = await s.append([pm("a")])
        assert msg.seq == 1
    finally:
        await s.close()


async def test_retention_by_count(store: SQLiteStore) -> None:
    await fill(store, "a", 5)
    await fill(store, "b", 2)
    deleted = await store.enforce_retention(max_count=3, max_age=0, now=2000.0)
    assert deleted == 2
    assert [m.seq for m in await store.since("a", 0, 100)] == [3, 4, 5]
    assert [m.seq for m in await store.since("b", 0, 100)] == [1, 2]
    a = await store.room("a")
    assert (a.seq, a.oldest) == (5, 3)
    assert (await store.room("b")).oldest == 1
    # New messages continue the numbering; retention runs again.
    [(msg, _)] = await store.append([pm("a", "later")])
    assert msg.seq == 6
    assert await store.enforce_retention(max_count=3, max_age=0, now=2000.0) == 1
    assert (await store.room("a")).oldest == 4
    _, more = await store.page("a", None, 3)
    assert more is False


async def test_retention_by_age(store: SQLiteStore) -> None:
    await store.append([pm("a", None, "old", ts=100.0), pm("a", None, "old2", ts=150.0)])
    await store.append([pm("a", None, "new", ts=950.0), pm("b", None, "ancient", ts=1.0)])
    deleted = await store.enforce_retention(max_count=0, max_age=100.0, now=1000.0)
    assert deleted == 3
    assert [m.text for m in await store.since("a", 0, 100)] == ["new"]
    assert await store.since("b", 0, 100) == []
    assert (await store.room("a")).oldest == 3
    b = await store.room("b")
    assert (b.seq, b.oldest) == (1, 2)  # empty: oldest = seq + 1


async def test_retention_with_no_limits_deletes_nothing(store: SQLiteStore) -> None:
    await fill(store, "a", 5, ts=0.0)
    assert await store.enforce_retention(max_count=0, max_age=0, now=1e9) == 0
    assert len(await store.since("a", 0, 100)) == 5


# ---------------------------------------------------------------------------
# file format


async def test_wal_mode_and_schema_version(store: SQLiteStore, db_path: Path) -> None:
    await fill(store, "a", 1)
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert SCHEMA_VERSION >= 1
        # The committed message is visible to another connection.
        assert other.execute("SELECT seq, text FROM messages").fetchall() == [(1, "m1")]
    finally:
        other.close()


async def test_newer_schema_version_is_refused(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    s = SQLiteStore(db_path)
    try:
        with pytest.raises(StoreError, match="upgrade") as info:
            await s.open()
        assert str(SCHEMA_VERSION + 1) in str(info.value)
    finally:
        await s.close()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        tables = raw.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        assert tables == []  # no migration was attempted
        # ...and the file was not switched to WAL by the refused open.
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        raw.close()


async def test_reopen_does_not_migrate_again(db_path: Path) -> None:
    for _ in range(2):
        s = SQLiteStore(db_path)
        await s.open()
        await s.append([pm("a")])
        await s.close()
    s = SQLiteStore(db_path)
    await s.open()
    try:
        assert [m.seq for m in await s.since("a", 0, 10)] == [1, 2]
    finally:
        await s.close()


# ---------------------------------------------------------------------------
# property: random interleavings of appends with duplicate client ids

ROOMS = ("r0", "r1", "r2")

op = st.tuples(
    st.sampled_from(ROOMS),
    st.one_of(st.none(), st.sampled_from([f"c{i}" for i in range(8)])),
)
batches = st.lists(st.lists(op, min_size=0, max_size=8), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, reopen_after=st.integers(0, 8))
def test_property_seqs_are_gapless_and_client_ids_unique(
    batches: list[list[tuple[str, str | None]]], reopen_after: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_check_interleaving(Path(tmp) / "p.db", batches, reopen_after))


async def _check_interleaving(
    path: Path, batches: list[list[tuple[str, str | None]]], reopen_after: int
) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        first: dict[tuple[str, str], str] = {}  # (room, client id) -> text first stored
        count = dict.fromkeys(ROOMS, 0)
        n = 0
        for b, batch in enumerate(batches):
            if b == reopen_after:
                await store.close()
                store = SQLiteStore(path)
                await store.open()
            pending = []
            for room, cid in batch:
                n += 1
                pending.append(PendingMessage(room, cid, "nick", f"t{n}", float(n)))
            results = await store.append(pending)
            assert len(results) == len(pending)
            for p_msg, (msg, dup) in zip(pending, results, strict=True):
                assert msg.room == p_msg.room
                key = (p_msg.room, p_msg.client_id) if p_msg.client_id else None
                if key is not None and key in first:
                    assert dup
                    assert msg.text == first[key]
                    assert msg.client_id == p_msg.client_id
                else:
                    assert not dup
                    count[p_msg.room] += 1
                    assert msg.seq == count[p_msg.room]
                    assert msg.text == p_msg.text
                    if key is not None:
                        first[key] = p_msg.text
        for room in ROOMS:
            stored = await store.since(room, 0, 10_000)
            assert [m.seq for m in stored] == list(range(1, count[room] + 1))
            cids = [m.client_id for m in stored if m.client_id is not None]
            assert len(cids) == len(set(cids))
            assert {(room, c) for c in cids} == {k for k in first if k[0] == room}
            assert len({m.epoch for m in stored}) <= 1
            meta = await store.room(room)
            if count[room] == 0:
                assert meta is None  # never written to: never created
            else:
                assert meta is not None and meta.seq == count[room]
    finally:
        await store.close()


# ---------------------------------------------------------------------------
# rooms: reading never creates; create and delete


async def test_reading_a_missing_room_creates_nothing(store: SQLiteStore, db_path: Path) -> None:
    for name in ("nothing", "nothing", "other"):
        assert await store.room(name) is None
        assert await store.since(name, 0, 10) == []
        assert await store.page(name, None, 10) == ([], False)
    assert await store.rooms() == []
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM rooms").fetchone()[0] == 0


async def test_create_room_is_idempotent_and_append_creates_rooms(store: SQLiteStore) -> None:
    first = await store.create_room("lobby")
    again = await store.create_room("lobby")
    assert (again.epoch, again.seq) == (first.epoch, 0)
    assert await store.room("lobby") == first
    [(msg, _)] = await store.append([pm("new")])
    assert (await store.room("new")).epoch == msg.epoch
    assert [r.name for r in await store.rooms()] == ["lobby", "new"]


async def test_delete_room_removes_history_and_a_new_room_gets_a_new_epoch(
    store: SQLiteStore, db_path: Path
) -> None:
    await fill(store, "a", 3)
    await fill(store, "b", 2)
    old = await store.room("a")
    assert await store.delete_room("a") is True
    assert await store.room("a") is None
    assert await store.since("a", 0, 10) == []
    assert [r.name for r in await store.rooms()] == ["b"]
    assert await store.delete_room("a") is False
    assert await store.delete_room("never") is False
    # Created again: a new epoch, numbering from 1, old client ids forgotten.
    [(msg, dup)] = await store.append([pm("a", "a-1")])
    assert (msg.seq, dup) == (1, False) and msg.epoch != old.epoch
    assert [m.seq for m in await store.since("b", 0, 10)] == [1, 2]
    await store.close()
    reopened = SQLiteStore(db_path)
    await reopened.open()
    try:
        assert [(r.name, r.seq) for r in await reopened.rooms()] == [("a", 1), ("b", 2)]
    finally:
        await reopened.close()
        await store.open()  # for the fixture's close


# ---------------------------------------------------------------------------
# one process per database file


async def test_a_second_store_on_the_same_file_is_refused_naming_the_holder(
    db_path: Path,
) -> None:
    first = SQLiteStore(db_path)
    await first.open()
    second = SQLiteStore(db_path)
    try:
        with pytest.raises(StoreLocked) as info:
            await second.open()
        err = info.value
        assert isinstance(err, StoreError) and isinstance(err, StartupError)
        assert err.pid == os.getpid()
        assert str(err) == (
            f"{db_path} is in use by another hubbub process (pid {os.getpid()}); "
            "stop it or use another --db"
        )
        assert "\n" not in str(err)
        with pytest.raises(StoreError, match="not open"):
            await second.since("a", 0, 1)  # the refused store stays closed
    finally:
        await first.close()
    # Released on close: the next one gets it.
    await second.open()
    await second.append([pm("a")])
    await second.close()


async def test_the_lock_dies_with_its_process(db_path: Path) -> None:
    # A holder killed with SIGKILL never cleans up; the kernel drops its lock.
    code = (
        "import asyncio, sys, time\n"
        "from hubbub.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        f"    s = SQLiteStore({str(db_path)!r})\n"
        "    await s.open()\n"
        "    print('open', flush=True)\n"
        "    time.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"open\n"
        with pytest.raises(StoreLocked, match=f"pid {proc.pid}\\)"):
            await SQLiteStore(db_path).open()
    finally:
        proc.kill()
        await proc.wait()
    s = SQLiteStore(db_path)
    await s.open()  # the pid left in the file does not matter
    await s.close()


async def test_memory_databases_take_no_lock(tmp_path: Path) -> None:
    a, b = SQLiteStore(":memory:"), SQLiteStore(":memory:")
    await a.open()
    await b.open()
    await a.close()
    await b.close()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# the paged room list, read off the commit thread


async def test_rooms_are_paged_in_name_order(store: SQLiteStore) -> None:
    for name in ["d", "a", "c", "b", "e"]:
        await fill(store, name, 2)
    await store.enforce_retention(1, 0, 0)
    page = await store.rooms(None, 2)
    assert [(m.name, m.seq, m.oldest) for m in page] == [("a", 2, 2), ("b", 2, 2)]
    assert [m.name for m in await store.rooms("b", 2)] == ["c", "d"]
    assert [m.name for m in await store.rooms("d", 2)] == ["e"]
    assert [m.name for m in await store.rooms("bb", 10)] == ["c", "d", "e"]
    assert await store.rooms("e", 2) == []
    assert [m.name for m in await store.rooms()] == ["a", "b", "c", "d", "e"]
    assert await store.rooms("a", 1) == [await store.room("b")]


async def test_the_room_list_is_not_read_on_the_commit_thread(store: SQLiteStore) -> None:
    await fill(store, "lobby", 3)
    # Hold the store (commit) thread: a commit of a huge batch, say.
    held = threading.Event()
    loop = asyncio.get_running_loop()
    assert store._executor is not None
    blocker = loop.run_in_executor(store._executor, held.wait, 10)
    try:
        rooms = await asyncio.wait_for(store.rooms(None, 10), 5)
        assert [(m.name, m.seq) for m in rooms] == [("lobby", 3)]
    finally:
        held.set()
        await blocker


async def test_the_room_list_reads_committed_rooms_only(store: SQLiteStore) -> None:
    await fill(store, "a", 1)
    await store.create_room("b")  # committed by itself
    assert [m.name for m in await store.rooms(None, 10)] == ["a", "b"]
    await store.delete_room("a")
    assert [m.name for m in await store.rooms(None, 10)] == ["b"]


async def test_the_room_list_of_an_in_memory_store() -> None:
    store = SQLiteStore(":memory:")
    await store.open()
    try:
        await fill(store, "x", 1)
        assert [m.name for m in await store.rooms(None, 1)] == ["x"]
    finally:
        await store.close()
    with pytest.raises(StoreError):
        await store.rooms()


async def test_the_lock_is_released_even_when_closing_the_database_fails(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = SQLiteStore(db_path)
    await first.open()

    def broken_close() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(first, "_close", broken_close)
    with pytest.raises(StoreError, match="disk I/O error"):
        await first.close()
    second = SQLiteStore(db_path)
    await second.open()  # not StoreLocked: the failed close let the file go
    await second.close()
