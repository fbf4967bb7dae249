"""``hubbub backup`` / ``hubbub restore``: online copies of the SQLite history file."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hubbub.apps.backup import (
    BackupError,
    add_backup_commands,
    backup,
    restore,
    run_backup_command,
)
from hubbub.errors import StartupError
from hubbub.store import PendingMessage
from hubbub.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore

from ..conftest import free_port, serve_args
from .test_chat import Client


async def _db_with_messages(path: Path, room: str = "lobby", count: int = 3) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.append([PendingMessage(room, f"c-{i}", "ann", f"m{i}", 1.0) for i in range(count)])
    await store.close()


def _rows(path: Path | str, sql: str = "SELECT room, seq, client_id FROM messages") -> list[Any]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql + " ORDER BY 1, 2").fetchall()
    finally:
        db.close()


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hubbub")
    add_backup_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


# -- against a real server ----------------------------------------------------------------


class Writer:
    """One hubbub.v1 client sending messages one after the other, each after the last ack."""

    def __init__(self, client: Client, room: str) -> None:
        self.client = client
        self.room = room
        self.acked: dict[str, int] = {}  # client id -> seq
        self.stop = asyncio.Event()

    async def run(self, limit: int = 5000, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        for i in range(limit):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            cid = f"w-{i}"
            await self.client.send(type="send", room=self.room, id=cid, text=f"text {i}")
            while True:
                frame = await self.client.recv()
                if frame["type"] == "ack" and frame["id"] == cid:
                    assert frame["duplicate"] is False
                    self.acked[cid] = frame["seq"]
                    break
                assert frame["type"] == "message", frame

    async def until(self, count: int, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks"
            await asyncio.sleep(0.01)


def _start(spawn: Any, db: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = spawn(*serve_args(port, "--db", str(db), "--rate", "5000", "--burst", "5000"), port=port)
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


async def test_backup_while_a_server_takes_writes_then_restore_resumes_numbering(
    spawn: Any, tmp_path: Path
) -> None:
    db = tmp_path / "hubbub.db"
    copy = tmp_path / "backups" / "copy.db"
    copy.parent.mkdir()
    proc, port = _start(spawn, db)
    client = await Client.open(f"ws://127.0.0.1:{port}/", "ann", "ops")
    writer = Writer(client, "ops")
    writing = asyncio.create_task(writer.run())
    try:
        await writer.until(50)
        acked_before = dict(writer.acked)
        info = await asyncio.to_thread(backup, str(db), str(copy))
        after_backup = len(writer.acked)
        await writer.until(after_backup + 20)  # the server kept taking writes
    finally:
        writer.stop.set()
        await writing
    # Every message acked before the backup began is in it; the copy is one
    # consistent snapshot: seq 1..N, each with the client id sent N-th.
    rows = _rows(copy)
    in_copy = {cid: seq for _, seq, cid in rows}
    assert acked_before.items() <= in_copy.items()
    assert [seq for _, seq, _ in rows] == list(range(1, len(rows) + 1))
    assert all(cid == f"w-{seq - 1}" for _, seq, cid in rows)
    assert info.messages == len(rows) and info.rooms == 1 and info.path == str(copy)
    assert info.schema_version == SCHEMA_VERSION
    assert not copy.with_name("copy.db-wal").exists()  # a backup is one file
    assert sorted(os.listdir(copy.parent)) == ["copy.db"]  # no temporary file left

    # Restore is refused while the server runs, naming it; nothing changes.
    total = len(writer.acked)
    with pytest.raises(BackupError, match=rf"in use by a running hubbub server \(pid {proc.pid}\)"):
        restore(str(copy), str(db))
    await client.close()
    _stop(proc)
    assert len(_rows(db)) == total

    epoch_sql = "SELECT name, epoch FROM rooms"
    ((_, backup_epoch),) = _rows(copy, epoch_sql)
    restored = restore(str(copy), str(db))
    assert restored.messages == len(rows)
    assert _rows(db) == rows
    ((_, new_epoch),) = _rows(db, epoch_sql)
    assert new_epoch != backup_epoch and _rows(copy, epoch_sql) == [("ops", backup_epoch)]
    assert len(_rows(str(db) + ".pre-restore")) == total  # the previous database, kept

    # A server on the restored database numbers on from the backup's last message, in a
    # new epoch: a client that saw the lost messages is told to reload, not handed new
    # messages under the sequence numbers it already has.
    proc, port = _start(spawn, db)
    client = await Client.open(f"ws://127.0.0.1:{port}/")
    room = await client.join("ops", "bob")
    assert room["seq"] == len(rows) and room["epoch"] == new_epoch
    old = await Client.open(f"ws://127.0.0.1:{port}/")
    await old.join("ops", "ann", since=total, epoch=backup_epoch)
    await old.expect("reset", room="ops", reason="epoch")
    await old.close()
    await client.send(type="send", room="ops", id="after-restore", text="back")
    while (frame := await client.recv())["type"] != "ack":
        pass
    assert frame["seq"] == len(rows) + 1 and frame["duplicate"] is False
    await client.send(type="send", room="ops", id=f"w-{len(rows) - 1}", text="retry")
    while (frame := await client.recv())["type"] != "ack":
        pass
    assert frame["duplicate"] is True  # the restored ids still deduplicate
    await client.close()
    _stop(proc)


# -- backup ----------------------------------------------------------------------------------


async def test_backup_into_a_directory_names_the_copy_and_never_overwrites(
    tmp_path: Path,
) -> None:
    db = tmp_path / "hubbub.db"
    await _db_with_messages(db)
    out = tmp_path / "out"
    out.mkdir()
    info = backup(str(db), str(out))
    name = Path(info.path).name
    assert Path(info.path).parent == out and name.startswith("hubbub-") and name.endswith(".db")
    assert _rows(info.path) == _rows(db)
    with pytest.raises(BackupError, match="exists; pick a new name or use --force"):
        backup(str(db), info.path)
    assert backup(str(db), info.path, force=True).messages == 3
    with pytest.raises(BackupError, match="is the database itself"):
        backup(str(db), str(db), force=True)
    assert len(_rows(db)) == 3


async def test_backup_refuses_what_it_cannot_copy_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no such database file"):
        backup(str(tmp_path / "typo.db"), str(tmp_path / "b.db"))
    assert not (tmp_path / "typo.db").exists()  # a typo creates nothing
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(BackupError, match=r"notes.txt is not a hubbub database \(file is not a"):
        backup(str(text), str(tmp_path / "b.db"))
    db = tmp_path / "hubbub.db"
    await _db_with_messages(db)
    with pytest.raises(BackupError, match="no such directory for the backup"):
        backup(str(db), str(tmp_path / "nodir" / "b.db"))
    assert sorted(os.listdir(tmp_path)) == ["hubbub.db", "hubbub.db.lock", "notes.txt"]


# -- restore ---------------------------------------------------------------------------------


def _other_sqlite(path: Path, version: int = 0) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    db.execute(f"PRAGMA user_version={version}")
    db.commit()
    db.close()


async def _newer_hubbub(path: Path) -> None:
    await _db_with_messages(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 84 + b"junk" * 300), "not a"),
        (lambda p: p.write_text("hello\n"), "is not a hubbub database"),
        (_other_sqlite, r"is not a hubbub database \(schema version 0, missing tables: rooms"),
        (_newer_hubbub, f"has schema version {SCHEMA_VERSION + 1}, newer than this hubbub"),
    ],
    ids=["damaged", "text", "other-sqlite", "newer-schema"],
)
async def test_restore_refuses_a_file_that_is_not_a_hubbub_database_it_can_run(
    tmp_path: Path, make: Any, problem: str
) -> None:
    db = tmp_path / "hubbub.db"
    await _db_with_messages(db)
    before = _rows(db)
    bad = tmp_path / "bad.db"
    result = make(bad)
    if asyncio.iscoroutine(result):
        await result
    with pytest.raises(BackupError, match=problem) as info:
        restore(str(bad), str(db))
    assert "\n" not in str(info.value) and isinstance(info.value, StartupError)
    assert _rows(db) == before
    assert not (tmp_path / "hubbub.db.pre-restore").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


async def test_restore_sets_the_old_wal_aside_with_the_old_database(tmp_path: Path) -> None:
    """After a crash the database's newest commits may be only in ``<db>-wal``: restore
    must not leave that WAL beside the restored file (SQLite would replay it into it),
    and the set-aside copy must keep it."""
    good = tmp_path / "good.db"
    await _db_with_messages(good, "kept", 2)
    backup(str(good), str(tmp_path / "backup.db"))
    db = tmp_path / "hubbub.db"
    await _db_with_messages(db, "old", 1)
    # A writer that "dies" with its commits still in the WAL (no checkpoint).
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.executemany(
        "INSERT INTO messages (room, seq, id, client_id, nick, text, ts) "
        "VALUES ('old', ?, ?, NULL, 'x', 'in the wal only', 1.0)",
        [(seq, f"id{seq}") for seq in range(2, 200)],
    )
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(str(db) + suffix, str(crashed / "hubbub.db") + suffix)
    writer.close()
    crashed_db = crashed / "hubbub.db"
    assert (crashed / "hubbub.db-wal").stat().st_size > 0

    restore(str(tmp_path / "backup.db"), str(crashed_db))
    assert _rows(crashed_db) == [("kept", 1, "c-0"), ("kept", 2, "c-1")]
    assert len(_rows(str(crashed_db) + ".pre-restore")) == 199


async def test_restore_into_a_new_place_and_a_missing_backup(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    await _db_with_messages(good)
    target = tmp_path / "new" / "hubbub.db"
    with pytest.raises(BackupError, match="no such directory for the database"):
        restore(str(good), str(target))
    target.parent.mkdir()
    assert restore(str(good), str(target)).messages == 3
    assert not (tmp_path / "new" / "hubbub.db.pre-restore").exists()
    with pytest.raises(BackupError, match="no such backup file"):
        restore(str(tmp_path / "typo.db"), str(target))
    with pytest.raises(BackupError, match="is the database itself"):
        restore(str(target), str(target))
    store = SQLiteStore(target)  # the restored file is a database the store opens
    await store.open()
    meta = await store.room("lobby")
    await store.close()
    assert meta is not None and meta.seq == 3


# -- the command line -----------------------------------------------------------------------


async def test_command_lines_print_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "hubbub.db"
    await _db_with_messages(db)
    dest = tmp_path / "b.db"
    assert run_backup_command(_parse("backup", str(dest), "--db", str(db))) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"backed up {db} to {dest}: 1 rooms, 3 messages, schema {SCHEMA_VERSION},"
    )
    assert run_backup_command(_parse("backup", str(dest), "--db", str(db))) == 1
    err = capsys.readouterr().err
    assert err == f"hubbub: error: {dest} exists; pick a new name or use --force to replace it\n"
    assert run_backup_command(_parse("backup", str(dest), "--db", str(db), "--force")) == 0
    capsys.readouterr()
    assert run_backup_command(_parse("restore", str(dest), "--db", str(db))) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"restored {db} from {dest} (the previous database is kept as {db}.")
    assert _parse("backup", "x").db == "hubbub.db"  # the same default as hubbub serve --db


async def test_user_ids_survive_backup_and_restore_and_an_older_backup_is_migrated(
    tmp_path: Path,
) -> None:
    """Schema 3 keeps the sender's user id: a backup and a restore carry it; a backup taken
    before user ids (schema 2) restores as it is and is migrated when a store opens it."""
    db = tmp_path / "hubbub.db"
    store = SQLiteStore(db)
    await store.open()
    await store.append(
        [
            PendingMessage("lobby", "c1", "ann", "signed in", 1.0, user="sub-ann"),
            PendingMessage("lobby", "c2", "bob", "anonymous", 2.0),
        ]
    )
    await store.close()
    copy = tmp_path / "copy.db"
    assert backup(str(db), str(copy)).schema_version == SCHEMA_VERSION == 3
    assert _rows(copy, 'SELECT room, seq, "user" FROM messages') == [
        ("lobby", 1, "sub-ann"),
        ("lobby", 2, None),
    ]
    restored = tmp_path / "restored.db"
    assert restore(str(copy), str(restored)).messages == 2
    store = SQLiteStore(restored)
    await store.open()
    try:
        users = [(m.seq, m.user) for m in await store.since("lobby", 0, 10)]
    finally:
        await store.close()
    assert users == [(1, "sub-ann"), (2, msgspec.UNSET)]

    # A backup from before user ids: schema 2, no "user" column.
    old = tmp_path / "old.db"
    raw = sqlite3.connect(old)
    for step in MIGRATIONS[:2]:
        raw.executescript(step)
    raw.execute("INSERT INTO rooms (name, epoch, last_seq, created) VALUES ('old', 'e', 1, 1)")
    raw.execute(
        "INSERT INTO messages (room, seq, id, client_id, nick, text, ts) "
        "VALUES ('old', 1, 'i', 'c1', 'ann', 'hi', 1.0)"
    )
    raw.execute("PRAGMA user_version=2")
    raw.commit()
    raw.close()
    older = tmp_path / "older.db"
    assert restore(str(old), str(older)).schema_version == 2
    store = SQLiteStore(older)
    await store.open()
    try:
        [msg] = await store.since("old", 0, 10)
        [(new, _)] = await store.append([PendingMessage("old", "c2", "ann", "x", 2.0, "sub-a")])
    finally:
        await store.close()
    assert (msg.text, msg.user, new.seq, new.user) == ("hi", msgspec.UNSET, 2, "sub-a")
    raw = sqlite3.connect(f"file:{older}?mode=ro", uri=True)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        raw.close()
