"""The SQLite store's commit policy: which commits run on the loop's thread, and when the
store thread checkpoints the WAL (re-exported by :mod:`hubbub.store.sqlite`).

With ``synchronous=NORMAL`` (or ``OFF``), :meth:`SQLiteStore.append
<hubbub.store.sqlite.SQLiteStore.append>` commits a batch on the event loop's thread
when nothing runs or waits on the store thread, which saves two thread wake-ups per
commit. Such a commit must stay short, so it is made there only when all of these hold
(otherwise on the store thread, behind whatever is queued there):

- at most :data:`INLINE_BATCH` (32) messages: each costs about 20 to 60 µs of loop CPU
  (its row, the retry check by client id, its room's row), so a batch at most about 2 ms
  (32 rooms) and usually under 1 ms (one room), against about 0.17 ms for one message;
- at most :data:`INLINE_BYTES` (16 KiB) of text (:func:`text_bytes`: ASCII counted
  exactly, four bytes per character otherwise): about 0.1 ms of loop CPU on top
  (32 messages of 8,000 characters cost 4 to 20 ms there before this limit);
- no ``fsync``: with WAL and NORMAL a commit is a ``write`` into the page cache,
  except the first commit of a new WAL (after open, and after a checkpoint that
  backfilled the whole WAL: :attr:`WalBook.restart`), which writes the WAL's header,
  fsyncs it and truncates the file to :data:`JOURNAL_SIZE_LIMIT`. That one is made on
  the store thread: one hand-off per checkpoint (about every 1,000 WAL pages) and per
  open. ``FULL`` and ``EXTRA`` fsync every commit: always on the store thread. (A
  checkpoint run by another process, Litestream say, can still make the next loop
  commit restart the WAL: nothing here sees it.)
- no wait for a lock: the loop's commit runs with a busy timeout of 0, so another
  connection holding the write lock (an operator's ``sqlite3`` shell, Litestream) makes
  it fail at once, and the batch goes to the store thread, which waits up to
  :data:`BUSY_TIMEOUT_MS` (5 s) like every store-thread task. The timeout is switched
  (one ``PRAGMA``, about 5 µs) only when the connection changes threads, not per commit.

The WAL checkpoint, which does ``fsync``, never runs on the loop's thread: the
connection has ``wal_autocheckpoint=0``, and a PASSIVE checkpoint is queued on the
store thread after about :data:`CHECKPOINT_PAGES` (1,000) pages of commits (counted in
commits, calibrated by the previous checkpoint, or :data:`CHECKPOINT_BYTES` of text),
with no commit during it. So the WAL restarts after each checkpoint, as with SQLite's
own auto-checkpoint, and stays about 4 MB. A reader holding an old snapshot (a backup,
say) holds back any checkpoint alike and lets the WAL grow; the first commit of the next
new WAL truncates it to :data:`JOURNAL_SIZE_LIMIT` (8 MiB). The bookkeeping
(:class:`WalBook`) costs a lock per commit, about 0.1 µs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable

#: Largest batch (messages) committed on the loop's thread when the store thread is idle.
INLINE_BATCH = 32
#: Most message text (UTF-8 bytes, bounded by :func:`text_bytes`) committed on the loop's
#: thread: 16 KiB adds about 0.1 ms of loop CPU to a commit.
INLINE_BYTES = 16 * 1024
#: WAL pages between two checkpoints (SQLite's own auto-checkpoint default): a WAL of
#: about 4 MB (1,000 pages of 4 KiB plus 24-byte frame headers).
CHECKPOINT_PAGES = 1000
#: Commits between two checkpoints until the first one has measured (a small commit
#: adds about five pages). Commits are counted, not pages: each checkpoint learns the
#: pages per commit of the last ones.
CHECKPOINT_COMMITS = 200
#: Bytes of message text (bounded by :func:`text_bytes`) between two checkpoints, for
#: large batches: about 2 MB of text, 500 to 1,000 WAL pages.
CHECKPOINT_BYTES = 2_000_000
#: ``PRAGMA journal_size_limit``: when a new WAL starts (on the store thread, the first
#: commit after a complete checkpoint) a file larger than this is truncated to it. 8 MiB
#: is twice the WAL of one checkpoint interval (about 4 MB), so a normal interval never
#: truncates and regrows the file (a size change is filesystem metadata work), while a
#: WAL that grew because a reader held an old snapshot (48 MB was seen behind a backup)
#: shrinks back to 8 MiB instead of keeping its largest size until the store closes.
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
#: How long the store thread waits for another connection's write lock (an operator's
#: ``sqlite3`` shell, Litestream): up to 5 s of that thread, never of the loop's. A commit
#: on the loop's thread waits 0 ms: if the lock is held, the batch goes to the store thread.
BUSY_TIMEOUT_MS = 5000


def text_bytes(texts: Iterable[str]) -> int:
    """An upper bound of the texts' UTF-8 size without encoding them: their length for
    ASCII text (``str.isascii`` is O(1)), four bytes per character otherwise."""
    return sum(len(t) if t.isascii() else 4 * len(t) for t in texts)


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY (any extended code): another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class WalBook:
    """The WAL's bookkeeping: commits and text bytes since the last checkpoint, the
    commits between two checkpoints (calibrated), and whether the next commit starts a
    new WAL. The thread that commits (the loop's or the store thread, one at a time)
    counts, the loop's thread queues checkpoints, the store thread runs them: every
    change under one lock (uncontended, about 0.1 µs)."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self.commits = 0
        self.bytes = 0
        self.every = CHECKPOINT_COMMITS
        #: The next commit starts a new WAL: SQLite writes the WAL's header and, with
        #: ``synchronous=NORMAL``, fsyncs it (and truncates the file to
        #: :data:`JOURNAL_SIZE_LIMIT`), so it is made on the store thread. True after
        #: open (the WAL was removed by the last close, or is being recovered) and
        #: after a checkpoint that backfilled the whole WAL; false after a commit.
        self.restart = True

    def committed(self, nbytes: int = 0) -> None:
        """A commit that wrote something, with ``nbytes`` of message text."""
        with self._mu:
            self.commits += 1
            self.bytes += nbytes
            self.restart = False

    def take(self) -> int | None:
        """The commits since the last checkpoint when another one is due (counters then
        start again), else None."""
        with self._mu:
            if self.commits < self.every and self.bytes < CHECKPOINT_BYTES:
                return None
            commits, self.commits, self.bytes = self.commits, 0, 0
            return commits

    def checkpointed(self, row: tuple[int, int, int] | None, commits: int) -> int:
        """Learn from ``PRAGMA wal_checkpoint(PASSIVE)``'s (busy, WAL pages, pages
        backfilled) after ``commits`` commits; the WAL's pages."""
        busy, pages, done = row if row is not None else (1, 0, 0)
        with self._mu:
            if busy == 0 and pages == done:
                self.restart = True
            if pages > 0 and commits > 0:
                self.every = max(10, min(1000, commits * CHECKPOINT_PAGES // pages))
        return max(pages, 0)
