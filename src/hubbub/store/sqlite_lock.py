"""One process per SQLite file: an exclusive ``flock`` on ``<db>.lock`` holding the owner's pid.

Re-exported by :mod:`hubbub.store.sqlite` (``FileLock``, ``StoreLocked``).
"""

from __future__ import annotations

import fcntl
import os

from ..errors import StartupError
from .base import StoreError


class StoreLocked(StoreError, StartupError):
    """Another live process has the database open; ``str()`` is one line for the operator."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        #: Who holds the lock, for messages: "pid 1234" (or "pid unknown").
        self.holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"{path} is in use by another hubbub process ({self.holder}); "
            "stop it or use another --db"
        )


class FileLock:
    """An exclusive ``flock`` on ``<db>.lock``, holding the owner's pid.

    The kernel releases a ``flock`` when its process dies (even by ``kill -9``),
    so a held lock always means a live holder and a stale file never blocks.
    """

    def __init__(self, db_path: str) -> None:
        self.path = db_path + ".lock"
        self.db_path = db_path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(self.db_path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # The file stays: removing it would let a third process lock a new
        # inode while a second one still waits on the old one.
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _read_pid(fd: int) -> int | None:
    """The pid written in a lock file (32 bytes read at most), None if unreadable."""
    try:
        raw = os.pread(fd, 32, 0)
        return int(raw.strip() or b"x")
    except (OSError, ValueError):
        return None
