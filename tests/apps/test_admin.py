"""Operator commands on a database file: listing and deleting rooms."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from hubbub.apps.admin import (
    AdminError,
    add_rooms_command,
    delete_room,
    list_rooms,
    run_rooms_command,
)
from hubbub.errors import StartupError
from hubbub.store import PendingMessage
from hubbub.store.sqlite import SQLiteStore


async def _db_with_rooms(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.append([PendingMessage(room, None, "ann", "hi", 1.0) for room in "aab"])
    await store.create_room("empty")
    await store.set_private("b", True)
    await store.close()


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hubbub")
    add_rooms_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def test_delete_and_list_rooms_of_a_database(tmp_path: Path) -> None:
    db = tmp_path / "hubbub.db"
    await _db_with_rooms(db)
    assert [(m.name, m.seq, m.private) for m in await list_rooms(str(db))] == [
        ("a", 2, False),
        ("b", 1, True),
        ("empty", 0, False),
    ]
    assert await delete_room(str(db), "a") is True
    assert await delete_room(str(db), "a") is False
    assert [m.name for m in await list_rooms(str(db))] == ["b", "empty"]


async def test_a_database_a_server_holds_is_refused_pointing_to_the_http_api(
    tmp_path: Path,
) -> None:
    db = tmp_path / "hubbub.db"
    await _db_with_rooms(db)
    server_store = SQLiteStore(db)  # what a running `hubbub serve` holds
    await server_store.open()
    try:
        with pytest.raises(AdminError) as info:
            await delete_room(str(db), "a")
        message = str(info.value)
        assert isinstance(info.value, StartupError) and "\n" not in message
        assert f"in use by a running hubbub server (pid {os.getpid()})" in message
        assert "curl -X DELETE" in message and "/api/rooms/a" in message
        with pytest.raises(AdminError, match="GET http://<host>:<port>/api/rooms"):
            await list_rooms(str(db))
        assert (await server_store.room("a")) is not None  # untouched
    finally:
        await server_store.close()


async def test_a_missing_file_or_a_bad_name_is_refused_and_creates_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(AdminError, match="no such database file"):
        await delete_room(str(missing), "a")
    with pytest.raises(AdminError, match="no such database file"):
        await list_rooms(str(missing))
    with pytest.raises(AdminError, match="starting with a letter or digit"):
        await delete_room(str(missing), "bad name")
    assert sorted(os.listdir(tmp_path)) == []


def test_the_rooms_command_prints_and_exits_with_a_status(tmp_path: Path, capsys) -> None:
    import asyncio

    db = tmp_path / "hubbub.db"
    asyncio.run(_db_with_rooms(db))
    assert run_rooms_command(_parse("rooms", "list", "--db", str(db))) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split("\t") for line in out]
    assert [row[:3] + row[4:] for row in rows] == [
        ["a", "2 messages", "last seq 2", "public"],
        ["b", "1 message", "last seq 1", "private"],
        ["empty", "0 messages", "last seq 0", "public"],
    ]
    assert all(re.fullmatch(r"epoch [0-9a-f]{12}", row[3]) for row in rows)
    assert run_rooms_command(_parse("rooms", "delete", "a", "--db", str(db))) == 0
    assert "deleted room 'a'" in capsys.readouterr().out
    assert run_rooms_command(_parse("rooms", "delete", "a", "--db", str(db))) == 1
    assert capsys.readouterr().err == f"hubbub: no room called 'a' in {db}\n"
    assert run_rooms_command(_parse("rooms", "delete", "x", "--db", str(tmp_path / "no"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("hubbub: ") and err.count("\n") == 1
