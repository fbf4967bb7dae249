"""``hubbub backup`` and ``hubbub restore``: copies of the SQLite history file.

Backup is online: it works while a server runs on the database and keeps
taking writes. It copies through SQLite's backup API
(:meth:`sqlite3.Connection.backup`) in one step, inside one read transaction,
so the copy is a consistent snapshot (in WAL mode a reader does not block the
writer): every message acked before the backup started is in it. The copy is
written to a temporary file beside the destination, checked (``PRAGMA
integrity_check``, hubbub's tables, schema version), flushed to disk and only
then renamed into place, so ``DEST`` is either the old file or a complete,
verified backup, never half of one.

Restore puts a backup in place of the database. It refuses while a server
holds the database (the store's lock on ``<db>.lock``, which restore holds
itself until it is done, so no server starts meanwhile), and refuses a file
that is not a hubbub database, is damaged, or has a schema newer than this
hubbub (an older one is migrated when the server starts). The previous
database, with its WAL file, is kept as ``<db>.pre-restore``.

A restore turns history back: sequence numbers after the backup's last one
were given to messages that are gone and will be given again. So every room
gets a new epoch; a server on the restored file numbers on from the backup's
last message, and a client that resumes with the old epoch is told ``reset``
(reason ``epoch``) and reloads the room instead of mixing the two histories.

Errors are :class:`BackupError`: one line for the operator, what is wrong and
what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..config import Settings
from ..errors import StartupError
from ..store.sqlite import SCHEMA_VERSION, FileLock, StoreLocked

#: Tables every hubbub database has (schema version 1 on).
_TABLES = ("rooms", "messages")
#: How long a connection waits for a lock SQLite holds briefly (WAL recovery, checkpoints).
_BUSY_TIMEOUT = 10.0


class BackupError(StartupError):
    """A backup or restore cannot be done; ``str()`` is one line for the operator."""


@dataclass(frozen=True)
class DbInfo:
    """What a checked database holds."""

    path: str
    schema_version: int
    rooms: int
    messages: int
    size: int


# -- checking a database ---------------------------------------------------------------


def _check(db: sqlite3.Connection, path: str) -> DbInfo:
    """Check that ``db`` is a sound hubbub database this hubbub can run on; its contents."""
    version = _check_schema(db, path)
    try:
        problems = [row[0] for row in db.execute("PRAGMA integrity_check(5)")]
        rooms = int(db.execute("SELECT COUNT(*) FROM rooms").fetchone()[0])
        messages = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is damaged: {exc}") from None
    if problems != ["ok"]:
        raise BackupError(f"{path} is damaged: integrity check says {'; '.join(problems)}")
    return DbInfo(path, version, rooms, messages, 0)


def _check_schema(db: sqlite3.Connection, path: str) -> int:
    """A hubbub database this hubbub can run on (no integrity scan yet); its schema version."""
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a hubbub database ({exc})") from None
    missing = [t for t in _TABLES if t not in tables]
    if version < 1 or missing:
        raise BackupError(
            f"{path} is not a hubbub database (schema version {version}, "
            f"missing tables: {', '.join(missing) or 'none'})"
        )
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"{path} has schema version {version}, newer than this hubbub "
            f"({SCHEMA_VERSION}); use the hubbub that wrote it, or upgrade"
        )
    return version


def _uri(path: str) -> str:
    return "file:" + quote(os.path.abspath(path))


def _must_be_file(path: str, what: str) -> None:
    if path == ":memory:" or path.startswith("file:"):
        raise BackupError(f"{path}: a {what} must be a file path")
    if not os.path.exists(path):
        raise BackupError(f"{path}: no such {what} file")
    if not os.path.isfile(path):
        raise BackupError(f"{path}: not a regular file")


# -- copying ------------------------------------------------------------------------------


def _copy_into(
    source: sqlite3.Connection, tmp: str, source_name: str, new_epochs: bool = False
) -> DbInfo:
    """Copy ``source`` into the new file ``tmp`` (one step: one consistent snapshot), make it
    a self-contained single file, check it and flush it to disk. ``new_epochs`` gives every
    room a new epoch (a restore: see :func:`restore`)."""
    target = sqlite3.connect(tmp, isolation_level=None, timeout=_BUSY_TIMEOUT)
    try:
        try:
            source.backup(target)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"copying {source_name} failed: {exc}") from None
        # The copy carries the WAL flag; a backup is one file that opens read-only.
        target.execute("PRAGMA journal_mode=DELETE")
        info = _check(target, source_name)
        if new_epochs:
            rooms = [row[0] for row in target.execute("SELECT name FROM rooms")]
            with target:
                target.execute("BEGIN IMMEDIATE")
                target.executemany(
                    "UPDATE rooms SET epoch = ? WHERE name = ?",
                    [(uuid.uuid4().hex[:12], name) for name in rooms],
                )
    finally:
        target.close()
    _fsync_file(tmp)
    return DbInfo(tmp, info.schema_version, info.rooms, info.messages, os.path.getsize(tmp))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_beside(path: Path) -> str:
    return str(path.parent / f".{path.name}.tmp-{os.getpid()}")


def _remove(path: str) -> None:
    for name in (path, path + "-journal", path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def backup(db_path: str, dest: str, *, force: bool = False) -> DbInfo:
    """Copy the database ``db_path`` to ``dest`` (a file, or an existing directory that gets
    ``<db name>-YYYYmmdd-HHMMSS.db``), online; the checked copy's :class:`DbInfo`.

    An existing ``dest`` file is replaced only with ``force``; never the database itself.
    """
    _must_be_file(db_path, "database")
    target = Path(dest)
    if target.is_dir():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = target / f"{Path(db_path).stem}-{stamp}.db"
    if _same_file(db_path, str(target)):
        raise BackupError(f"{target} is the database itself; back up to another file")
    if target.exists() and not force:
        raise BackupError(f"{target} exists; pick a new name or use --force to replace it")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent}: no such directory for the backup")
    try:
        # A read-write connection (reading only): it shares the running server's WAL
        # index, and when it is the last one it tidies the -wal/-shm files up on close.
        source = sqlite3.connect(db_path, isolation_level=None, timeout=_BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {db_path}: {exc}") from None
    tmp = _tmp_beside(target)
    try:
        _check_schema(source, db_path)
        info = _copy_into(source, tmp, db_path)
        os.replace(tmp, target)
        _fsync_dir(str(target.parent))
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {db_path} failed: {exc}") from None
    finally:
        source.close()
        _remove(tmp)
    return DbInfo(str(target), info.schema_version, info.rooms, info.messages, info.size)


# -- restoring ----------------------------------------------------------------------------


def restore(src: str, db_path: str) -> DbInfo:
    """Put the backup ``src`` in place of the database ``db_path``, every room with a new
    epoch; the restored :class:`DbInfo`. Refuses while a server holds the database; the
    previous database (with its WAL file) is kept as ``<db>.pre-restore``."""
    _must_be_file(src, "backup")
    if db_path == ":memory:" or db_path.startswith("file:"):
        raise BackupError(f"{db_path}: the database must be a file path")
    if _same_file(src, db_path):
        raise BackupError(f"{src} is the database itself; restore from a backup file")
    db_dir = os.path.dirname(os.path.abspath(db_path))
    if not os.path.isdir(db_dir):
        raise BackupError(f"{db_dir}: no such directory for the database")
    lock = FileLock(db_path)
    created_lock = not os.path.exists(lock.path)
    try:
        lock.acquire()
    except StoreLocked as exc:
        raise BackupError(
            f"{db_path} is in use by a running hubbub server ({exc.holder}); "
            "stop it, then restore"
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot lock {lock.path}: {exc.strerror or exc}") from None
    try:
        if created_lock:
            _own_like_dir(lock.path, db_dir)
        return _restore_locked(src, db_path, db_dir)
    finally:
        lock.release()


def _restore_locked(src: str, db_path: str, db_dir: str) -> DbInfo:
    try:
        source = sqlite3.connect(f"{_uri(src)}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {src}: {exc}") from None
    tmp = _tmp_beside(Path(db_path))
    try:
        _check_schema(source, src)
        info = _copy_into(source, tmp, src, new_epochs=True)
        if os.path.exists(db_path):
            _own_like(tmp, db_path)
            _set_aside(db_path)
        else:
            _own_like_dir(tmp, db_dir)
        os.replace(tmp, db_path)
        _fsync_dir(db_dir)
    except OSError as exc:
        raise BackupError(f"cannot restore into {db_path}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise BackupError(f"restore from {src} failed: {exc}") from None
    finally:
        source.close()
        _remove(tmp)
    return DbInfo(db_path, info.schema_version, info.rooms, info.messages, info.size)


def _set_aside(db_path: str) -> None:
    """Move the database and its WAL to ``<db>.pre-restore`` (and ``...-wal``): the WAL
    first, so that no step leaves the old WAL beside the new database."""
    old = db_path + ".pre-restore"
    _remove(old)
    for suffix in ("-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(db_path + suffix, old + suffix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(db_path + "-shm")
    os.replace(db_path, old)


def _own_like(path: str, model: str) -> None:
    """Run as root (e.g. with sudo), give ``path`` the owner and mode of ``model`` so the
    service's user can still write it."""
    st = os.stat(model)
    os.chmod(path, st.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)


def _own_like_dir(path: str, directory: str) -> None:
    if os.geteuid() == 0:
        st = os.stat(directory)
        os.chown(path, st.st_uid, st.st_gid)


# -- the command line (wired into hubbub.cli) --------------------------------------------


def add_backup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hubbub backup`` and ``hubbub restore`` to the CLI's subparsers."""
    default_db = Settings().db
    backup_cmd = sub.add_parser(
        "backup",
        help="copy the SQLite history file, online (a server may keep running)",
        description="Copy the history database to DEST through SQLite's backup API: a "
        "consistent snapshot, taken while a server may keep running on the database. "
        "The copy is checked (integrity, schema version) and written atomically. "
        "DEST may be a directory: the copy is then named <db>-YYYYmmdd-HHMMSS.db.",
    )
    backup_cmd.add_argument("dest", metavar="DEST", help="backup file or directory")
    backup_cmd.add_argument("--db", default=default_db, help="the SQLite history file")
    backup_cmd.add_argument(
        "--force", action="store_true", help="replace DEST if it is an existing file"
    )
    restore_cmd = sub.add_parser(
        "restore",
        help="put a backup in place of the history file (no server running on it)",
        description="Replace the history database with the backup SRC, after checking it "
        "(a hubbub database, intact, not newer than this hubbub). Refuses while a server "
        "runs on the database. The previous database is kept as <db>.pre-restore.",
    )
    restore_cmd.add_argument("src", metavar="SRC", help="the backup file")
    restore_cmd.add_argument("--db", default=default_db, help="the SQLite history file")


def run_backup_command(args: argparse.Namespace) -> int:
    """Run ``hubbub backup`` or ``hubbub restore``; errors are one line on stderr, status 1."""
    started = time.monotonic()
    try:
        if args.command == "backup":
            info = backup(args.db, args.dest, force=args.force)
            verb = f"backed up {args.db} to {info.path}"
        elif args.command == "restore":
            had_db = os.path.exists(args.db)
            info = restore(args.src, args.db)
            verb = f"restored {args.db} from {args.src}"
            if had_db:
                verb += f" (the previous database is kept as {args.db}.pre-restore)"
        else:
            raise ValueError(f"not a backup command: {args.command!r}")
    except BackupError as exc:
        print(f"hubbub: error: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(
        f"{verb}: {info.rooms} rooms, {info.messages} messages, schema {info.schema_version}, "
        f"{info.size} bytes, checked, in {took:.1f}s"
    )
    return 0
