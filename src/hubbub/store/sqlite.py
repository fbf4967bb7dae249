"""The embedded store: SQLite in one file, WAL mode, schema versions and migrations.

All database work runs on one dedicated thread with one connection, so the
event loop never blocks on disk and writes are naturally serialized. The room
list is the exception: it is read on a second thread with its own read-only
connection (WAL lets it read the last committed state while a commit runs), so
listing many rooms never delays a commit. A batch of messages is committed in
one transaction (the group commit that :class:`hubbub.apps.journal.Journal`
feeds), which is what keeps durability from capping throughput.

One process per database file: :meth:`SQLiteStore.open` takes an exclusive
advisory lock (``flock``) on ``<db>.lock`` next to the database, holding the
owner's pid, and refuses to open a file another live process holds
(:class:`StoreLocked`, in :mod:`hubbub.store.sqlite_lock`). Room epochs and
sequence numbers are cached in the process, so a second writer would number
messages from a stale cache.

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash or ``kill -9``
of the server (every committed transaction is in the WAL file before the
commit returns); ``synchronous=FULL`` also survives power loss, at the cost of
an fsync per commit.

Small batches on the loop's thread. Handing a batch to the store thread and
its result back costs two thread wake-ups (futexes, the loop's self-pipe) per
commit, more than the commit itself at steady rates. So with
``synchronous=NORMAL`` (or ``OFF``), a small batch is committed on the calling
(event loop) thread when nothing is running or queued on the store thread:
same connection, same transaction, one at a time, so commits stay strictly
ordered. Never a commit that would ``fsync`` (the first of a new WAL), wait for
another connection's lock, or carry much text; the WAL checkpoint runs on the
store thread. The policy, its limits and their costs are in
:mod:`hubbub.store.sqlite_wal`; the file lock in :mod:`hubbub.store.sqlite_lock`,
ids in :mod:`hubbub.store.sqlite_ids`, the schema in
:mod:`hubbub.store.sqlite_schema` (every name importable from here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..protocol import Message
from .base import PendingMessage, RoomMeta, StoreError, stored_message
from .sqlite_ids import _message_id, _MessageIds, _new_epoch
from .sqlite_lock import FileLock, StoreLocked, _read_pid
from .sqlite_schema import _COLUMNS, MIGRATIONS, SCHEMA_VERSION, _columns, migrate
from .sqlite_wal import (
    BUSY_TIMEOUT_MS,
    CHECKPOINT_BYTES,
    CHECKPOINT_COMMITS,
    CHECKPOINT_PAGES,
    INLINE_BATCH,
    INLINE_BYTES,
    JOURNAL_SIZE_LIMIT,
    WalBook,
    is_busy,
    text_bytes,
)

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHECKPOINT_BYTES",
    "CHECKPOINT_COMMITS",
    "CHECKPOINT_PAGES",
    "INLINE_BATCH",
    "INLINE_BYTES",
    "JOURNAL_SIZE_LIMIT",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "FileLock",
    "SQLiteStore",
    "StoreLocked",
    "_MessageIds",
    "_message_id",
    "_new_epoch",
    "_read_pid",
]

T = TypeVar("T")

log = logging.getLogger("hubbub.store")


class SQLiteStore:
    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        self.path = str(path)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        # The room list's own thread and connection (None for ":memory:", whose
        # second connection would be another database: the list then runs on the
        # store thread).
        self._reader: ThreadPoolExecutor | None = None
        self._rdb: sqlite3.Connection | None = None
        self._lock: FileLock | None = None
        # Room epoch and last seq, owned by the store thread.
        self._rooms: dict[str, RoomMeta] = {}
        # Leader locks held by this process (the file lock makes it the only one).
        self._leading: set[str] = set()
        # Small batches may commit on the loop's thread (see the module docstring):
        # only with NORMAL or OFF (no fsync per commit).
        self.inline = self.synchronous in ("OFF", "NORMAL")
        # Tasks handed to the store thread and not finished yet (under _mu: the
        # count goes down on the store thread). The loop's thread commits only at 0.
        self._mu = threading.Lock()
        self._inflight = 0
        # The checkpoint's bookkeeping (new at each open); a checkpoint queued.
        self._wal = WalBook()
        self._checkpoint: Future[Any] | None = None
        self._closing = False
        # The connection's busy timeout: BUSY_TIMEOUT_MS on the store thread, 0 for a
        # commit on the loop's thread (switched only when it changes hands).
        self._busy_ms = BUSY_TIMEOUT_MS
        #: Counters, for tests and benchmarks: commits made on the loop's thread,
        #: batches sent to the store thread because another connection held the
        #: write lock, checkpoints run, and the WAL's size in pages at the last one.
        self.inline_commits = 0
        self.inline_busy = 0
        self.checkpoints = 0
        self.wal_pages = 0

    # -- running on the store thread -----------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        future = self._submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc
        finally:
            self._maybe_checkpoint()

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn`` on the store thread, counted until it is done (or cancelled
        before it started): no commit runs on the loop's thread meanwhile."""
        if self._executor is None:
            raise StoreError("store is not open")
        with self._mu:
            self._inflight += 1
        try:
            future = self._executor.submit(self._on_store_thread, fn, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any] | None) -> None:
        with self._mu:
            self._inflight -= 1

    def _on_store_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._busy_ms != BUSY_TIMEOUT_MS and self._db is not None:
            self._busy_timeout(BUSY_TIMEOUT_MS)  # after commits on the loop's thread
        return fn(*args)

    def _busy_timeout(self, ms: int) -> None:
        self.db.execute(f"PRAGMA busy_timeout={ms}")
        self._busy_ms = ms

    # -- the WAL checkpoint, on the store thread ------------------------------------

    def _maybe_checkpoint(self) -> None:
        """Queue a PASSIVE checkpoint on the store thread once enough was written (on
        the loop's thread: it only submits)."""
        if (
            self._checkpoint is not None
            or self._executor is None
            or self._closing
            or self.path == ":memory:"
        ):
            return
        commits = self._wal.take()
        if commits is None:
            return
        try:
            future = self._submit(self._checkpoint_wal, commits)
        except (StoreError, RuntimeError):  # closing
            return
        self._checkpoint = future
        future.add_done_callback(self._checkpointed)

    def _checkpoint_wal(self, commits: int) -> None:
        row = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        self.wal_pages = self._wal.checkpointed(row, commits)

    def _checkpointed(self, future: Future[Any]) -> None:
        self._checkpoint = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("sqlite: WAL checkpoint failed: %s", future.exception())

    async def open(self) -> None:
        """Open (creating or migrating) the database; :class:`StoreLocked` if another
        live process has it open."""
        self._closing = False
        self._wal = WalBook()  # the first commit starts a new WAL
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.path)
            try:
                lock.acquire()
            except OSError as exc:
                raise StoreError(f"cannot lock {lock.path}: {exc.strerror or exc}") from exc
            self._lock = lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubbub-sqlite")
        try:
            await self._run(self._open)
            if self.path != ":memory:":
                self._reader = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="hubbub-sqlite-read"
                )
                await self._read(self._open_reader)
        except BaseException:
            await self.close()
            raise

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the reader thread (the store thread for ":memory:")."""
        if self._reader is None:
            return await self._run(fn, *args)
        if self._executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _open_reader(self) -> None:
        rdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        rdb.execute("PRAGMA query_only=1")
        rdb.execute("PRAGMA busy_timeout=5000")
        self._rdb = rdb

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()  # before touching the file: a newer hubbub owns it
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this hubbub "
                f"({SCHEMA_VERSION}); upgrade hubbub"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._busy_ms = BUSY_TIMEOUT_MS
        # Checkpoints run on the store thread (_maybe_checkpoint), never in a commit
        # made on the loop's thread.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        self._db = db
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        migrate(db)

    async def close(self) -> None:
        self._closing = True  # no checkpoint queued from now on: closing checkpoints
        if self._reader is not None:
            reader, self._reader = self._reader, None
            rdb, self._rdb = self._rdb, None
            if rdb is not None:
                await asyncio.get_running_loop().run_in_executor(reader, rdb.close)
            reader.shutdown(wait=True)
        try:
            if self._executor is not None:
                try:
                    await self._run(self._close)
                finally:
                    self._executor.shutdown(wait=True)
                    self._executor = None
                    self._rooms.clear()
        finally:
            # Released even when closing the database failed: another process may
            # then open the file (the lock only guards against two live writers).
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    def _meta(self, room: str, create: bool = True) -> RoomMeta | None:
        meta = self._rooms.get(room)
        if meta is not None:
            return meta
        row = self.db.execute(
            "SELECT epoch, last_seq, private FROM rooms WHERE name = ?", (room,)
        ).fetchone()
        if row is None:
            if not create:
                return None
            epoch = _new_epoch()
            self.db.execute(
                "INSERT INTO rooms (name, epoch, last_seq, created) VALUES (?, ?, 0, ?)",
                (room, epoch, time.time()),
            )
            meta = RoomMeta(room, epoch, 0, 1)
        else:
            oldest = self.db.execute(
                "SELECT MIN(seq) FROM messages WHERE room = ?", (room,)
            ).fetchone()[0]
            meta = RoomMeta(
                room, row[0], row[1], oldest if oldest is not None else row[1] + 1, bool(row[2])
            )
        self._rooms[room] = meta
        return meta

    # -- writes ---------------------------------------------------------------

    async def append(self, batch: list[PendingMessage]) -> list[tuple[Message, bool]]:
        if (
            self._inflight == 0
            and self.inline
            and not self._wal.restart
            and 0 < len(batch) <= INLINE_BATCH
            and self._db is not None
            and self._executor is not None
            and not self._closing
            and text_bytes(p.text for p in batch) <= INLINE_BYTES
        ):
            # Nothing runs on the store thread, and nothing can be queued there
            # before this returns (only this thread queues): commit here.
            out = self._append_here(batch)
            if out is not None:
                self.inline_commits += 1
                self._maybe_checkpoint()
                return out
            self.inline_busy += 1  # another connection holds the write lock
        return await self._run(self._append, batch)

    def _append_here(self, batch: list[PendingMessage]) -> list[tuple[Message, bool]] | None:
        """Commit on the loop's thread, never waiting for a lock: None (nothing
        written) if another connection holds it."""
        try:
            if self._busy_ms:
                self._busy_timeout(0)
            return self._append(batch)
        except sqlite3.Error as exc:
            if is_busy(exc):
                return None
            raise StoreError(f"sqlite: {exc}") from exc

    def _append(self, batch: list[PendingMessage]) -> list[tuple[Message, bool]]:
        db = self.db
        out: list[tuple[Message, bool]] = []
        rows: list[tuple[Any, ...]] = []
        seen: dict[tuple[str, str], Message] = {}
        touched: dict[str, RoomMeta] = {}
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            for pending in batch:
                meta = self._meta(pending.room)
                assert meta is not None
                key = (pending.room, pending.client_id) if pending.client_id else None
                if key is not None:
                    dup = seen.get(key) or self._by_client_id(pending.room, pending.client_id)
                    if dup is not None:
                        out.append((dup, True))
                        continue
                if meta.name not in touched:
                    # Work on a copy: the cache changes only once the commit is done.
                    touched[meta.name] = RoomMeta(
                        meta.name, meta.epoch, meta.seq, meta.oldest, meta.private
                    )
                live = touched[meta.name]
                live.seq += 1
                msg = stored_message(
                    pending.room,
                    live.seq,
                    live.epoch,
                    _message_id(),
                    pending.nick,
                    pending.text,
                    pending.ts,
                    pending.client_id,
                    pending.user,
                )
                if key is not None:
                    seen[key] = msg
                rows.append(_columns(msg, pending.user))
                out.append((msg, False))
            if rows:
                db.executemany(
                    f"INSERT INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                db.executemany(
                    "UPDATE rooms SET last_seq = ? WHERE name = ?",
                    [(m.seq, m.name) for m in touched.values()],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            # The room cache may hold rooms created in this transaction.
            self._rooms.clear()
            raise
        self._wrote(before, text_bytes(r[5] for r in rows))
        for name, meta in touched.items():
            self._rooms[name] = meta
        return out

    def _wrote(self, before: int, nbytes: int = 0) -> None:
        """Count a commit for the checkpoint if it changed rows since ``before`` (the
        connection's ``total_changes`` then): only such a commit wrote WAL frames."""
        if self.db.total_changes != before:
            self._wal.committed(nbytes)

    def _by_client_id(self, room: str, client_id: str | None) -> Message | None:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND client_id = ?", (room, client_id)
        ).fetchone()
        return self._row(row) if row else None

    def _row(self, row: tuple[Any, ...]) -> Message:
        room, seq, mid, client_id, nick, text, ts, user = row
        meta = self._rooms.get(room) or self._meta(room, create=False)
        assert meta is not None  # a stored message's room exists
        return stored_message(room, seq, meta.epoch, mid, nick, text, ts, client_id, user)

    async def reset(self, room: str) -> RoomMeta:
        return await self._run(self._reset, room)

    def _reset(self, room: str) -> RoomMeta:
        db = self.db
        old = self._meta(room)
        assert old is not None
        epoch = _new_epoch()
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM messages WHERE room = ?", (room,))
            db.execute("UPDATE rooms SET epoch = ?, last_seq = 0 WHERE name = ?", (epoch, room))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._wrote(before)
        self._rooms[room] = RoomMeta(room, epoch, 0, 1, old.private)
        return RoomMeta(room, epoch, 0, 1, old.private)

    async def set_private(self, room: str, private: bool) -> bool:
        return await self._run(self._set_private, room, private)

    def _set_private(self, room: str, private: bool) -> bool:
        before = self.db.total_changes
        found = (
            self.db.execute(
                "UPDATE rooms SET private = ? WHERE name = ?", (int(private), room)
            ).rowcount
            > 0
        )
        self._wrote(before)  # an UPDATE in autocommit: its own commit
        meta = self._rooms.get(room)
        if found and meta is not None:
            meta.private = private
        return found

    @contextlib.asynccontextmanager
    async def leader(self, name: str) -> AsyncIterator[bool]:
        """One process owns the file (its lock), so this process leads unless one of
        its own tasks already holds ``name``."""
        if self._executor is None:
            raise StoreError("store is not open")
        if name in self._leading:
            yield False
            return
        self._leading.add(name)
        try:
            yield True
        finally:
            self._leading.discard(name)

    async def delete_room(self, room: str) -> bool:
        return await self._run(self._delete_room, room)

    def _delete_room(self, room: str) -> bool:
        db = self.db
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM messages WHERE room = ?", (room,))
            deleted = db.execute("DELETE FROM rooms WHERE name = ?", (room,)).rowcount > 0
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._wrote(before)
        self._rooms.pop(room, None)
        return deleted

    async def enforce_retention(self, max_count: int, max_age: float, now: float) -> int:
        return await self._run(self._retention, max_count, max_age, now)

    def _retention(self, max_count: int, max_age: float, now: float) -> int:
        db = self.db
        deleted = 0
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            if max_count > 0:
                cur = db.execute(
                    "DELETE FROM messages WHERE seq <= "
                    "(SELECT last_seq FROM rooms WHERE rooms.name = messages.room) - ?",
                    (max_count,),
                )
                deleted += cur.rowcount
            if max_age > 0:
                cur = db.execute("DELETE FROM messages WHERE ts < ?", (now - max_age,))
                deleted += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._wrote(before, 100 * deleted)  # about a row's size in the WAL
        if deleted:
            self._rooms.clear()  # oldest seqs moved: reload lazily
        return deleted

    # -- reads ----------------------------------------------------------------

    async def since(self, room: str, seq: int, limit: int) -> list[Message]:
        return await self._run(self._since, room, seq, limit)

    def _since(self, room: str, seq: int, limit: int) -> list[Message]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
            (room, seq, limit),
        ).fetchall()
        return [self._row(r) for r in rows]

    async def page(self, room: str, before: int | None, limit: int) -> tuple[list[Message], bool]:
        return await self._run(self._page, room, before, limit)

    def _page(self, room: str, before: int | None, limit: int) -> tuple[list[Message], bool]:
        bound = before if before is not None else 2**62
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (room, bound, limit + 1),
        ).fetchall()
        has_more = len(rows) > limit
        return [self._row(r) for r in reversed(rows[:limit])], has_more

    async def room(self, room: str) -> RoomMeta | None:
        return await self._run(self._room, room, False)

    async def create_room(self, room: str) -> RoomMeta:
        meta = await self._run(self._room, room, True)
        assert meta is not None
        return meta

    def _room(self, room: str, create: bool) -> RoomMeta | None:
        before = self.db.total_changes
        meta = self._meta(room, create)
        self._wrote(before)  # a room created: an INSERT in autocommit, its own commit
        if meta is None:
            return None
        return RoomMeta(meta.name, meta.epoch, meta.seq, meta.oldest, meta.private)

    async def rooms(self, after: str | None = None, limit: int | None = None) -> list[RoomMeta]:
        return await self._read(self._rooms_page, after, limit)

    def _rooms_page(self, after: str | None, limit: int | None) -> list[RoomMeta]:
        # Committed state only, on the reader's own connection (or the store
        # thread's for ":memory:"): never the store thread's cache.
        db = self._rdb if self._rdb is not None else self.db
        rows = db.execute(
            "SELECT r.name, r.epoch, r.last_seq, "
            "(SELECT MIN(seq) FROM messages WHERE room = r.name), r.private FROM rooms r "
            "WHERE r.name > ? ORDER BY r.name LIMIT ?",
            ("" if after is None else after, -1 if limit is None else limit),
        ).fetchall()
        return [
            RoomMeta(name, epoch, seq, oldest if oldest is not None else seq + 1, bool(private))
            for name, epoch, seq, oldest, private in rows
        ]
