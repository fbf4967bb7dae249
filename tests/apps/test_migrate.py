"""``hubbub migrate``: SQLite history into the machine's real PostgreSQL (own schema),
then a server on PostgreSQL serves the same history and a client resumes there."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from hubbub.apps.chat import create_app
from hubbub.apps.migrate import MigrateError, migrate
from hubbub.broker import LocalBroker
from hubbub.config import Settings
from hubbub.store import PendingMessage, Store
from hubbub.store.sqlite import SQLiteStore
from tests.services import PG_DSN, pg_connect, postgres_store
from tests.services import pg_schema as pg_schema  # the fixture

from ..conftest import ROOT, ws_url
from .test_chat import Client


@pytest.fixture
def schema(request: pytest.FixtureRequest) -> str:
    """The test's own PostgreSQL schema (tests/services.py: dropped after)."""
    return str(request.getfixturevalue("pg_schema"))


ROOMS = {"lobby": 1200, "dev": 300, "quiet": 0}


def sent(room: str, i: int) -> PendingMessage:
    """Message ``i`` of ``room``: two in three with the sender's user id."""
    user = f"sub-{i % 7}" if i % 3 else None
    return PendingMessage(room, f"{room}-{i}", f"u{i % 7}", f"{room} {i} ✓", 1e9 + i, user)


async def make_source(path: Path) -> dict[str, list[object]]:
    """Rooms of every kind: many messages (two in three with a user id), a reset one
    (new epoch), a trimmed one, a private one, an empty one. Returns each room's
    (epoch, seq, messages)."""
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.append([PendingMessage("trim", f"t{i}", "bob", "x", 7.0) for i in range(10)])
        await store.enforce_retention(4, 0, 0.0)  # "trim" keeps its last 4 (7..10)
        for room, n in ROOMS.items():
            await store.create_room(room)
            for start in range(0, n, 250):
                await store.append([sent(room, i) for i in range(start, min(n, start + 250))])
        await store.append([PendingMessage("reset", "old", "ann", "before", 5.0)])
        await store.reset("reset")
        await store.append(
            [PendingMessage("reset", f"r{i}", "ann", "after", 6.0) for i in range(3)]
        )
        await store.set_private("dev", True)
        return {m.name: [m.epoch, m.seq, await all_of(store, m.name)] for m in await store.rooms()}
    finally:
        await store.close()


async def all_of(store: Store, room: str) -> list[tuple[object, ...]]:
    msgs = await store.since(room, 0, 100_000)
    return [(m.seq, m.epoch, m.id, m.client_id, m.nick, m.text, m.ts, m.user) for m in msgs]



def target_url(schema: str) -> str:
    return f"{PG_DSN}?schema={schema}"


async def target_state(schema: str) -> dict[str, list[object]]:
    store = postgres_store(schema)
    await store.open()
    try:
        return {m.name: [m.epoch, m.seq, await all_of(store, m.name)] for m in await store.rooms()}
    finally:
        await store.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # What `hubbub migrate` runs (the same add_migrate_command / run_migrate_command).
        [sys.executable, "-m", "hubbub.apps.migrate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_keeps_everything_and_clients_resume(tmp_path: Path, schema: str) -> None:
    db = tmp_path / "hubbub.db"
    source = await make_source(db)
    proc = await asyncio.to_thread(
        run_cli, "--from", f"sqlite:///{db}", "--to", target_url(schema), "--batch", "100"
    )
    assert proc.returncode == 0, proc.stderr
    assert "migrated 5 rooms, " in proc.stdout and "verified" in proc.stdout
    assert "copying 5 rooms" in proc.stderr
    assert await target_state(schema) == source
    assert len(source["lobby"][2]) == ROOMS["lobby"]  # type: ignore[arg-type]
    users = [m[-1] for m in source["lobby"][2]]  # type: ignore[union-attr]
    assert users[:3] == [msgspec.UNSET, "sub-1", "sub-2"]  # copied as they were
    pg = postgres_store(schema)
    await pg.open()
    assert [m.name for m in await pg.rooms() if m.private] == ["dev"]
    assert (await pg.room("trim")).oldest == 7  # type: ignore[union-attr]
    await pg.close()

    # A server on the PostgreSQL store: the client resumes with what it held.
    server = create_app(
        "127.0.0.1", 0, Settings(rate=0, db=":memory:"),
        store=postgres_store(schema), broker=LocalBroker(),
    )  # fmt: skip
    await server.listen()
    try:
        epoch, seq, _ = source["lobby"]
        client = await Client.open(ws_url(server))
        await client.send(type="join", room="lobby", epoch=epoch, since=seq - 2)
        await client.expect("room", room="lobby", epoch=epoch, seq=seq)
        got = [await client.expect("message") for _ in range(2)]
        assert [(m["seq"], m["epoch"]) for m in got] == [(seq - 1, epoch), (seq, epoch)]
        await client.expect("resumed", room="lobby", epoch=epoch)
        # The old client id is still known (a retry after the move is not stored twice).
        await client.send(type="send", room="lobby", id=f"lobby-{ROOMS['lobby'] - 1}", text="x")
        ack = await client.expect("ack")
        assert (ack["seq"], ack["epoch"]) == (seq, epoch)
        await client.send(type="send", room="lobby", id="new", text="after the move")
        frames = [await client.recv() for _ in range(2)]
        acked = next(f for f in frames if f["type"] == "ack")
        assert (acked["seq"], acked["epoch"]) == (seq + 1, epoch)
        await client.close()
    finally:
        await server.shutdown()


async def test_an_interrupted_migration_resumes(tmp_path: Path, schema: str) -> None:
    db = tmp_path / "hubbub.db"
    source = await make_source(db)
    out = io.StringIO()
    await migrate(f"sqlite:///{db}", target_url(schema), 100, False, out)
    # As if it had stopped half-way: messages missing from the target.
    conn = await pg_connect()
    try:
        await conn.execute(f'DELETE FROM "{schema}".messages WHERE seq > 500')
    finally:
        await conn.close()
    again = io.StringIO()
    totals = await migrate(f"sqlite:///{db}", target_url(schema), 100, False, again)
    assert "resuming: 5 rooms" in again.getvalue()
    assert totals.copied == ROOMS["lobby"] - 500
    assert await target_state(schema) == source


async def test_another_history_in_the_target_is_refused_unless_force(
    tmp_path: Path, schema: str
) -> None:
    db = tmp_path / "hubbub.db"
    source = await make_source(db)
    pg = postgres_store(schema)
    await pg.open()
    await pg.append([PendingMessage("lobby", "other", "eve", "another history", 1.0)])
    await pg.close()
    proc = await asyncio.to_thread(
        run_cli, "--from", f"sqlite:///{db}", "--to", target_url(schema)
    )
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("hubbub: error: the target already holds 1 of these rooms"), line
    assert "'lobby'" in line and "--force" in line
    before = await target_state(schema)
    assert list(before) == ["lobby"] and before["lobby"][1] == 1  # untouched
    await migrate(f"sqlite:///{db}", target_url(schema), 500, True, io.StringIO())
    assert await target_state(schema) == source


async def test_refusals_are_one_line(tmp_path: Path, schema: str) -> None:
    db = tmp_path / "hubbub.db"
    await make_source(db)
    with pytest.raises(MigrateError, match="--to must be a postgresql:// URL"):
        await migrate(f"sqlite:///{db}", f"sqlite:///{tmp_path}/b.db", 10, False, io.StringIO())
    # A server running on the source holds its lock: refused.
    running = SQLiteStore(db)
    await running.open()
    try:
        proc = await asyncio.to_thread(
            run_cli, "--from", f"sqlite:///{db}", "--to", target_url(schema)
        )
    finally:
        await running.close()
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "in use by another hubbub process" in line, line
    bad = await asyncio.to_thread(run_cli, "--from", "x", "--to", "y", "--batch", "0")
    assert bad.returncode == 2 and "--batch must be 1 to 100000" in bad.stderr


async def test_a_missing_source_file_is_refused_and_not_created(
    tmp_path: Path, schema: str
) -> None:
    missing = tmp_path / "missing.db"
    proc = await asyncio.to_thread(
        run_cli, "--from", f"sqlite:///{missing}", "--to", target_url(schema)
    )
    assert proc.returncode == 1, proc.stdout
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("hubbub: error: --from: ") and line.endswith(
        f"{missing} does not exist (sqlite:///PATH is relative to the current directory, "
        "sqlite:////PATH absolute)"
    ), line
    assert "migrated" not in proc.stdout
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # no empty database, no lock
    # A relative path is looked up from the current directory.
    relative = await asyncio.to_thread(
        run_cli, "--from", "sqlite:///no-such-dir-h13/missing.db", "--to", target_url(schema)
    )
    assert relative.returncode == 1
    assert "no-such-dir-h13/missing.db does not exist" in relative.stderr
    assert not (ROOT / "no-such-dir-h13").exists()
    with pytest.raises(MigrateError, match="is not a file"):
        await migrate(f"sqlite:///{tmp_path}", target_url(schema), 10, False, io.StringIO())


def test_help_names_the_flags() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--from" in proc.stdout and "--force" in proc.stdout
