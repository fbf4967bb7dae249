"""The SQLite store's commits on the loop's thread, its own WAL checkpoints, message ids."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hubbub.store import PendingMessage
from hubbub.store.sqlite import CHECKPOINT_COMMITS, CHECKPOINT_PAGES, INLINE_BATCH, SQLiteStore


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
    threads = record_threads(store, "_append")
    here = threading.get_ident()
    await store.append([pm("a", "1")])
    await store.append([pm("a", f"s{i}") for i in range(INLINE_BATCH)])
    await store.append([pm("a", f"b{i}") for i in range(INLINE_BATCH + 1)])  # too big
    assert threads[:2] == [here, here]
    assert threads[2] != here
    assert store.inline_commits == 2
    assert [m.seq for m in await store.since("a", 0, 1000)] == list(range(1, 2 * INLINE_BATCH + 3))


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
    # A commit asked for while a checkpoint runs is made on the store thread, after it.
    assert commits - store.checkpoints <= store.inline_commits < commits
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
