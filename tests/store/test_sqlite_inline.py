"""The SQLite store's commits on the loop's thread, its own WAL checkpoints, message ids."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hubbub.store import PendingMessage
from hubbub.store import sqlite as sqlite_store
from hubbub.store.sqlite import (
    CHECKPOINT_COMMITS,
    CHECKPOINT_PAGES,
    INLINE_BATCH,
    INLINE_BYTES,
    JOURNAL_SIZE_LIMIT,
    SQLiteStore,
    _MessageIds,
)


def pm(room: str, client_id: str | None = None, text: str = "hi") -> PendingMessage:
    return PendingMessage(room, client_id, "ann", text, 1000.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "hubbub.db")
    await s.open()
    yield s
    await s.close()


def record_threads(store: SQLiteStore, name: str) -> list[int]:
    """Wrap ``store.<name>``: the ids of the threads it runs on, in call order."""
    threads: list[int] = []
    inner: Callable[..., Any] = getattr(store, name)

    def wrapped(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return inner(*args)

    setattr(store, name, wrapped)
    return threads


async def test_small_batches_commit_on_the_loops_thread_when_the_store_is_idle(
    store: SQLiteStore,
) -> None:
    await store.append([pm("a", "0")])  # the WAL's first commit: on the store thread
    threads = record_threads(store, "_append")
    here = threading.get_ident()
    await store.append([pm("a", "1")])
    await store.append([pm("a", f"s{i}") for i in range(INLINE_BATCH)])
    await store.append([pm("a", f"b{i}") for i in range(INLINE_BATCH + 1)])  # too big
    assert threads[:2] == [here, here]
    assert threads[2] != here
    assert store.inline_commits == 2
    assert [m.seq for m in await store.since("a", 0, 1000)] == list(range(1, 2 * INLINE_BATCH + 4))


async def test_full_synchronous_never_commits_on_the_loops_thread(tmp_path: Path) -> None:
    # FULL makes an fsync per commit: never on the loop's thread.
    store = SQLiteStore(tmp_path / "full.db", synchronous="FULL")
    await store.open()
    try:
        threads = record_threads(store, "_append")
        await store.append([pm("a", "1")])
        assert threads != [threading.get_ident()]
        assert store.inline_commits == 0
    finally:
        await store.close()


async def test_a_busy_store_thread_keeps_commits_in_order(store: SQLiteStore) -> None:
    """While work runs or waits on the store thread, a batch queues behind it: a room
    deleted before a message to it is written exists again with that message only."""
    await store.append([pm("a", f"old{i}") for i in range(3)])
    gate = threading.Event()
    blocked = asyncio.ensure_future(store._run(gate.wait, 10))
    deleted = asyncio.ensure_future(store.delete_room("a"))
    appended = asyncio.ensure_future(store.append([pm("a", "new")]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not appended.done()  # not committed on the loop's thread ahead of the delete
    gate.set()
    assert await blocked
    assert await deleted is True
    [(msg, dup)] = await appended
    assert (msg.seq, dup) == (1, False)
    assert [m.client_id for m in await store.since("a", 0, 10)] == ["new"]


async def test_checkpoints_run_on_the_store_thread_and_bound_the_wal(
    store: SQLiteStore, tmp_path: Path
) -> None:
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    threads = record_threads(store, "_checkpoint_wal")
    wal = tmp_path / "hubbub.db-wal"
    commits = 5 * CHECKPOINT_COMMITS
    for i in range(commits):
        # About 7 pages per commit: more than CHECKPOINT_COMMITS assumes.
        await store.append([pm("a", f"c{i}", "x" * 2000)])
    await store.room("a")  # runs after any checkpoint queued on the store thread
    assert store.checkpoints >= 4
    # A commit asked for while a checkpoint runs is made on the store thread, after it,
    # and so is the first one after open.
    assert commits - store.checkpoints - 1 <= store.inline_commits < commits
    assert threads and threading.get_ident() not in threads
    # Reset after each checkpoint, calibrated after the first: the last one found about
    # CHECKPOINT_PAGES pages, and the file never held much more than the first one's
    # (without checkpoints it would hold every commit: about 30 MB).
    assert 0.5 * CHECKPOINT_PAGES <= store.wal_pages <= 1.5 * CHECKPOINT_PAGES
    assert wal.stat().st_size <= 3 * CHECKPOINT_PAGES * (4096 + 24)
    assert len(await store.since("a", 0, commits + 1)) == commits


async def test_message_ids_draw_randomness_in_bulk(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_room("a")  # its epoch is random too
    calls = []
    urandom = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return urandom(n)

    monkeypatch.setattr(os, "urandom", counting)
    ids = []
    for i in range(300):
        [(msg, _)] = await store.append([pm("a", f"c{i}")])
        ids.append(msg.id)
    assert len(calls) <= 2  # 256 ids per system call, not one each
    assert len(set(ids)) == 300
    for mid in ids:
        assert len(mid) == 32
        assert uuid.UUID(mid).version == 4
        assert uuid.UUID(mid).hex == mid


async def test_a_commit_that_starts_a_new_wal_is_made_on_the_store_thread(tmp_path: Path) -> None:
    """It writes the WAL's header and fsyncs it even with synchronous=NORMAL: after open
    (a fresh file, then a restart) and after a checkpoint that backfilled the whole WAL."""
    here = threading.get_ident()
    for run in range(2):
        store = SQLiteStore(tmp_path / "hubbub.db")
        await store.open()
        try:
            threads = record_threads(store, "_append")
            for i in range(3):
                await store.append([pm("a", f"{run}-{i}")])
            await store._run(store._checkpoint_wal, 3)  # no reader: backfills everything
            assert store.wal_pages > 0
            for i in range(3, 5):
                await store.append([pm("a", f"{run}-{i}")])
            assert [t == here for t in threads] == [False, True, True, False, True]
        finally:
            await store.close()


async def test_a_duplicate_writes_nothing_so_the_new_wal_still_starts_on_the_store_thread(
    store: SQLiteStore,
) -> None:
    await store.append([pm("a", "1")])
    await store._run(store._checkpoint_wal, 1)
    threads = record_threads(store, "_append")
    await store.append([pm("a", "1")])  # a retry: no row written, the WAL not restarted
    await store.append([pm("a", "2")])
    await store.append([pm("a", "3")])
    assert [t == threading.get_ident() for t in threads] == [False, False, True]


async def test_another_writer_holding_the_lock_never_blocks_the_loop(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """An operator's sqlite3 shell (or Litestream) holds the write lock: the loop's
    thread does not wait for it (busy timeout 5 s); the store thread does."""
    await store.append([pm("a", "0")])
    threads = record_threads(store, "_append")
    here = threading.get_ident()
    outside = sqlite3.connect(tmp_path / "hubbub.db", isolation_level=None)
    try:
        outside.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        appended = asyncio.ensure_future(store.append([pm("a", "1")]))
        await asyncio.sleep(0)  # the append runs up to its first wait
        assert time.monotonic() - started < 2.5  # generous: the timeout is 5 s
        assert not appended.done()
        assert store.inline_busy == 1
    finally:
        outside.execute("COMMIT")
        outside.close()
    [(msg, dup)] = await appended
    assert (msg.seq, dup) == (2, False)
    assert threads == [here, threads[1]] and threads[1] != here  # tried here, then there
    await store.append([pm("a", "2")])  # the lock is free: on the loop's thread again
    assert threads[-1] == here
    assert [m.client_id for m in await store.since("a", 0, 10)] == ["0", "1", "2"]


async def test_batches_with_much_text_commit_on_the_store_thread(store: SQLiteStore) -> None:
    """At most INLINE_BYTES of text on the loop's thread: a character of ASCII text
    counts one byte, any other four (UTF-8's most)."""
    await store.append([pm("a", "0")])
    threads = record_threads(store, "_append")
    half = INLINE_BYTES // 2
    await store.append([pm("a", "1", "x" * INLINE_BYTES)])
    await store.append([pm("a", "2", "x" * half), pm("a", "3", "y" * (half + 1))])
    await store.append([pm("a", "4", "é" * (INLINE_BYTES // 4))])
    await store.append([pm("a", "5", "😀" * (INLINE_BYTES // 4 + 1))])
    assert [t == threading.get_ident() for t in threads] == [True, False, True, False]
    assert [len(m.text) for m in await store.since("a", 1, 10)] == [
        INLINE_BYTES,
        half,
        half + 1,
        INLINE_BYTES // 4,
        INLINE_BYTES // 4 + 1,
    ]


async def test_every_commit_counts_toward_the_checkpoint_and_text_in_utf8_bytes(
    store: SQLiteStore,
) -> None:
    book = store._wal
    await store.append([pm("a", "0")])
    commits = book.commits
    await store.create_room("b")  # an INSERT: a commit
    await store.create_room("b")  # exists: nothing written
    await store.set_private("b", True)  # an UPDATE: a commit
    await store.set_private("nowhere", True)  # no row: nothing written
    await store.append([pm("a", "0")])  # a retry: nothing written
    assert book.commits == commits + 2
    before = book.bytes
    text = "é" * 1000
    await store.append([pm("a", "1", text)])
    assert book.commits == commits + 3
    assert book.bytes - before >= len(text.encode())


async def test_a_wal_grown_behind_a_reader_shrinks_when_it_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hubbub.db"
    wal = tmp_path / "hubbub.db-wal"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.db.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT
    finally:
        await store.close()
    limit = 64 * 1024
    monkeypatch.setattr(sqlite_store, "JOURNAL_SIZE_LIMIT", limit)
    store = SQLiteStore(path)
    await store.open()
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await store.append([pm("a", "0")])
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages").fetchone()  # holds its snapshot
        for i in range(1, 40):
            await store.append([pm("a", f"{i}", "x" * 4000)])
        await store._run(store._checkpoint_wal, 40)  # held back by the reader
        assert wal.stat().st_size > 4 * limit
        reader.execute("COMMIT")
        await store._run(store._checkpoint_wal, 0)  # backfills everything
        await store.append([pm("a", "last")])  # a new WAL, on the store thread
        assert wal.stat().st_size <= limit
        assert len(await store.since("a", 0, 100)) == 41
    finally:
        reader.close()
        await store.close()


def test_message_ids_survive_a_pool_emptied_by_another_thread() -> None:
    """Another thread may take every id between this one's refill and its pop (with
    free threading; with the GIL it is rarely seen): the draw refills again."""
    ids = _MessageIds()

    class Drained(list[str]):
        steals = 3

        def extend(self, items: Any) -> None:
            super().extend(items)
            if self.steals:
                self.steals -= 1
                self.clear()  # what other threads' draws do

    ids._pool = Drained()
    assert len(ids()) == 32
    assert ids._pool.steals == 0


def test_message_ids_from_two_threads_at_once() -> None:
    """Two stores in one process draw from the one pool on their two threads."""
    ids = _MessageIds()
    drawn: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def draw(out: list[str]) -> None:
        try:
            for _ in range(20_000):
                out.append(ids())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(drawn[0]) | set(drawn[1])) == 40_000
