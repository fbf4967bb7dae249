"""The group-commit journal, with a real SQLite store and with fake stores."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.apps.journal import Journal
from hubbub.protocol import Message
from hubbub.store import PendingMessage
from hubbub.store.sqlite import SQLiteStore


def pm(room: str, client_id: str | None = None, text: str = "hi") -> PendingMessage:
    return PendingMessage(room, client_id, "ann", text, 1.0)


class Recorder:
    """on_commit / on_failure callbacks that remember what they got."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[Message, bool, Any]]] = []
        self.failures: list[tuple[list[tuple[PendingMessage, Any]], Exception]] = []
        self.changed = asyncio.Event()

    def on_commit(self, results: list[tuple[Message, bool, Any]]) -> None:
        self.commits.append(results)
        self.changed.set()

    def on_failure(self, batch: list[tuple[PendingMessage, Any]], exc: Exception) -> None:
        self.failures.append((batch, exc))
        self.changed.set()

    @property
    def committed(self) -> list[tuple[Message, bool, Any]]:
        return [r for batch in self.commits for r in batch]

    async def wait_for(self, commits: int = 0, failures: int = 0) -> None:
        async with asyncio.timeout(5):
            while len(self.commits) < commits or len(self.failures) < failures:
                self.changed.clear()
                await self.changed.wait()


class FakeStore:
    """Records batches; ``fail`` makes the next appends raise; ``gate`` holds them."""

    def __init__(self) -> None:
        self.batches: list[list[PendingMessage]] = []
        self.fail = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.seq: dict[str, int] = {}

    async def append(self, batch: list[PendingMessage]) -> list[tuple[Message, bool]]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise OSError("disk on fire")
        self.batches.append(list(batch))
        out = []
        for p in batch:
            seq = self.seq[p.room] = self.seq.get(p.room, 0) + 1
            out.append(
                (Message(p.room, seq, "e", f"id{seq}", p.nick, p.text, p.ts, p.client_id), False)
            )
        return out


async def close(journal: Journal) -> None:
    """``journal.close()``, failing instead of hanging if the writer never stops."""
    async with asyncio.timeout(5):
        await journal.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "journal.db")
    await store.open()
    yield store
    await store.close()


# ---------------------------------------------------------------------------


async def test_group_commit_with_real_store(sqlite_store: SQLiteStore) -> None:
    rec = Recorder()
    journal = Journal(sqlite_store, rec.on_commit, rec.on_failure)
    journal.start()
    submitted: list[tuple[str, int, int]] = []
    rooms = ("a", "b", "c")

    async def producer(w: int, n: int) -> None:
        rng = random.Random(w)
        for i in range(n):
            room = rng.choice(rooms)
            token = (room, w, i)
            assert journal.submit(pm(room, f"{w}-{i}", f"w{w} m{i}"), token)
            submitted.append(token)
            await asyncio.sleep(0)

    await asyncio.gather(*(producer(w, 40) for w in range(5)))
    await close(journal)

    assert rec.failures == []
    assert journal.committed == 200 == len(submitted)
    assert 1 <= journal.batches < journal.committed  # group commit happened
    assert len(rec.commits) == journal.batches
    results = rec.committed
    # Results come back in submit order, each with its own token.
    assert [token for _, _, token in results] == submitted
    assert not any(dup for _, dup, _ in results)
    for msg, _, (room, w, i) in results:
        assert (msg.room, msg.client_id, msg.text) == (room, f"{w}-{i}", f"w{w} m{i}")
    # Per room, sequence numbers increase by one in commit order.
    for room in rooms:
        seqs = [msg.seq for msg, _, _ in results if msg.room == room]
        assert seqs == list(range(1, len(seqs) + 1))
        stored = await sqlite_store.since(room, 0, 1000)
        assert [m.seq for m in stored] == seqs
    assert journal.backlog == 0


async def test_duplicates_are_reported_to_on_commit(sqlite_store: SQLiteStore) -> None:
    rec = Recorder()
    journal = Journal(sqlite_store, rec.on_commit, rec.on_failure)
    journal.start()
    journal.submit(pm("a", "x", "one"), 1)
    await rec.wait_for(commits=1)
    journal.submit(pm("a", "x", "retry"), 2)
    journal.submit(pm("a", "y"), 3)
    await close(journal)
    (m1, d1, t1), (m2, d2, t2), (m3, d3, t3) = rec.committed
    assert (d1, d2, d3) == (False, True, False)
    assert (t1, t2, t3) == (1, 2, 3)
    assert m2 == m1
    assert m3.seq == 2


async def test_failure_goes_to_on_failure_and_journal_keeps_working() -> None:
    store = FakeStore()
    store.fail = 1
    rec = Recorder()
    journal = Journal(store, rec.on_commit, rec.on_failure)  # type: ignore[arg-type]
    journal.start()
    lost = [pm("a", "1"), pm("b", "2")]
    for i, p in enumerate(lost):
        assert journal.submit(p, f"lost{i}")
    await rec.wait_for(failures=1)
    [(batch, exc)] = rec.failures
    assert batch == [(lost[0], "lost0"), (lost[1], "lost1")]
    assert isinstance(exc, OSError)
    assert "disk on fire" in str(exc)
    assert rec.commits == []
    assert journal.committed == 0 and journal.batches == 0

    ok = pm("a", "3")
    assert journal.submit(ok, "ok")
    await rec.wait_for(commits=1)
    [(msg, dup, token)] = rec.committed
    assert (msg.room, msg.seq, msg.client_id, dup, token) == ("a", 1, "3", False, "ok")
    assert journal.committed == 1 and journal.batches == 1
    assert len(rec.failures) == 1
    await close(journal)


async def test_failing_real_store_then_recovery(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "j.db")  # not open yet: append raises StoreError
    rec = Recorder()
    journal = Journal(store, rec.on_commit, rec.on_failure)
    journal.start()
    journal.submit(pm("a"), "t1")
    await rec.wait_for(failures=1)
    await store.open()
    try:
        journal.submit(pm("a"), "t2")
        await close(journal)
        [(msg, _, token)] = rec.committed
        assert (msg.seq, token) == (1, "t2")
    finally:
        await store.close()


async def test_callback_errors_do_not_stop_the_writer() -> None:
    store = FakeStore()
    calls: list[int] = []
    called = asyncio.Event()

    def on_commit(results: list[tuple[Message, bool, Any]]) -> None:
        calls.append(len(results))
        called.set()
        raise RuntimeError("callback bug")

    journal = Journal(store, on_commit, lambda batch, exc: None)  # type: ignore[arg-type]
    journal.start()
    journal.submit(pm("a"), 1)
    async with asyncio.timeout(5):
        await called.wait()
    journal.submit(pm("a"), 2)
    await close(journal)
    assert calls == [1, 1]
    assert journal.committed == 2


async def test_submit_returns_false_when_queue_is_full() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    rec = Recorder()
    journal = Journal(store, rec.on_commit, rec.on_failure, max_queue=3)  # type: ignore[arg-type]
    journal.start()
    assert journal.submit(pm("a", "0"), 0)
    # The writer takes message 0 and is held inside the store.
    async with asyncio.timeout(5):
        await store.entered.wait()
    assert journal.backlog == 0
    assert [journal.submit(pm("a", str(i)), i) for i in range(1, 5)] == [True, True, True, False]
    assert journal.backlog == 3
    store.gate.set()
    await rec.wait_for(commits=2)
    assert journal.backlog == 0
    assert [t for _, _, t in rec.committed] == [0, 1, 2, 3]
    assert journal.submit(pm("a", "5"), 5)  # room again
    await close(journal)
    assert [t for _, _, t in rec.committed] == [0, 1, 2, 3, 5]


async def test_max_batch_splits_batches() -> None:
    store = FakeStore()
    rec = Recorder()
    journal = Journal(store, rec.on_commit, rec.on_failure, max_batch=2)  # type: ignore[arg-type]
    journal.start()
    for i in range(5):
        journal.submit(pm("a", str(i)), i)
    await close(journal)
    assert [len(b) for b in store.batches] == [2, 2, 1]
    assert journal.batches == 3 and journal.committed == 5
    assert [t for _, _, t in rec.committed] == [0, 1, 2, 3, 4]


async def test_close_writes_what_is_queued(sqlite_store: SQLiteStore) -> None:
    rec = Recorder()
    journal = Journal(sqlite_store, rec.on_commit, rec.on_failure)
    journal.start()
    for i in range(50):
        assert journal.submit(pm(f"r{i % 2}", str(i)), i)
    assert journal.backlog == 50  # the writer has not run yet
    await close(journal)
    assert journal.backlog == 0
    assert journal.committed == 50
    assert [t for _, _, t in rec.committed] == list(range(50))
    assert len(await sqlite_store.since("r0", 0, 100)) == 25
    assert len(await sqlite_store.since("r1", 0, 100)) == 25
    # A closed journal refuses new work.
    assert journal.submit(pm("r0", "late"), "late") is False
    await close(journal)  # idempotent


async def test_close_of_a_journal_never_started_still_writes_what_it_accepted(
    sqlite_store: SQLiteStore,
) -> None:
    rec = Recorder()
    journal = Journal(sqlite_store, rec.on_commit, rec.on_failure)
    assert journal.submit(pm("r", "early"), "early")
    await close(journal)
    assert [t for _, _, t in rec.committed] == ["early"]
    assert len(await sqlite_store.since("r", 0, 10)) == 1


async def test_close_waits_for_a_batch_in_flight() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    rec = Recorder()
    journal = Journal(store, rec.on_commit, rec.on_failure)  # type: ignore[arg-type]
    journal.start()
    journal.submit(pm("a"), 1)
    async with asyncio.timeout(5):
        await store.entered.wait()
    journal.submit(pm("a"), 2)
    closing = asyncio.create_task(close(journal))
    await asyncio.sleep(0.01)
    assert not closing.done()
    store.gate.set()
    async with asyncio.timeout(5):
        await closing
    assert [t for _, _, t in rec.committed] == [1, 2]
