"""Operator commands on a database file: ``hubbub rooms list`` and ``hubbub rooms delete``.

They open the SQLite file themselves, so they respect its lock: while a server
runs on the database, they refuse (naming the server's pid) and point to the
HTTP API of that server instead (``GET /api/rooms``, ``DELETE /api/rooms/{room}``
with the API key), which also tells the room's members.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import msgspec

from .. import protocol as p
from ..config import Settings
from ..errors import StartupError
from ..store import RoomMeta, StoreError
from ..store.sqlite import SQLiteStore, StoreLocked


class AdminError(StartupError):
    """An operator command cannot run; ``str()`` is one line (what is wrong, what to do)."""


def _must_exist(db_path: str) -> None:
    if db_path != ":memory:" and not os.path.isfile(db_path):
        # Opening would create an empty database: a typo must not look like success.
        raise AdminError(f"{db_path}: no such database file (see --db)")


async def _open(db_path: str, through_server: str) -> SQLiteStore:
    _must_exist(db_path)
    store = SQLiteStore(db_path)
    try:
        await store.open()
    except StoreLocked as exc:
        raise AdminError(
            f"{db_path} is in use by a running hubbub server ({exc.holder}); {through_server}"
        ) from None
    except StoreError as exc:
        raise AdminError(f"{db_path}: {exc}") from None
    return store


async def delete_room(db_path: str, room: str) -> bool:
    """Delete ``room`` and all its history from the database; False if there is no such room.

    Raises :class:`AdminError` for an invalid name, a missing file, or a database a
    running server holds (delete through that server's HTTP API then).
    """
    try:
        msgspec.convert(room, p.RoomName)
    except msgspec.ValidationError:
        raise AdminError(f"invalid room name {room!r}: {p.ROOM_RULE}") from None
    store = await _open(
        db_path,
        "delete the room through it: curl -X DELETE -H 'Authorization: Bearer <api key>' "
        f"http://<host>:<port>/api/rooms/{room}",
    )
    try:
        return await store.delete_room(room)
    except StoreError as exc:
        raise AdminError(f"{db_path}: {exc}") from None
    finally:
        await store.close()


async def list_rooms(db_path: str) -> list[RoomMeta]:
    """Every room of the database with its newest sequence number and whether it is
    private, by name."""
    store = await _open(db_path, "list the rooms through it: GET http://<host>:<port>/api/rooms")
    try:
        return await store.rooms()
    except StoreError as exc:
        raise AdminError(f"{db_path}: {exc}") from None
    finally:
        await store.close()


# -- the command line (wired into hubbub.cli) --------------------------------------


def add_rooms_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hubbub rooms {list,delete}`` to the CLI's subparsers."""
    default_db = Settings().db
    rooms = sub.add_parser(
        "rooms",
        help="list or delete rooms in a database file (no server running on it)",
        description="List or delete the rooms of a hubbub database. While a server runs "
        "on the database, use its HTTP API instead (GET /api/rooms, DELETE "
        "/api/rooms/NAME with the API key), which also tells the room's members.",
    )
    actions = rooms.add_subparsers(dest="rooms_command", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="list the rooms: name, messages kept, last seq, epoch, private or public",
        description="One room a line, tab-separated: its name, the messages it keeps, its "
        "last sequence number, its epoch, and 'private' (history and members for members "
        "only) or 'public'.",
    )
    listing.add_argument("--db", default=default_db, help="the SQLite history file")
    delete = actions.add_parser("delete", help="delete a room and all its messages")
    delete.add_argument("name", help="the room to delete")
    delete.add_argument("--db", default=default_db, help="the SQLite history file")


def run_rooms_command(args: argparse.Namespace) -> int:
    """Run ``hubbub rooms ...``; errors are one line on stderr and exit status 1."""
    try:
        if args.rooms_command == "list":
            metas = asyncio.run(list_rooms(args.db))
            for meta in metas:
                kept = meta.seq - meta.oldest + 1
                count = f"{kept} message" + ("" if kept == 1 else "s")
                access = "private" if meta.private else "public"
                print(f"{meta.name}\t{count}\tlast seq {meta.seq}\tepoch {meta.epoch}\t{access}")
            if not metas:
                print(f"no rooms in {args.db}", file=sys.stderr)
            return 0
        if args.rooms_command == "delete":
            if asyncio.run(delete_room(args.db, args.name)):
                print(f"deleted room {args.name!r} and its history from {args.db}")
                return 0
            print(f"hubbub: no room called {args.name!r} in {args.db}", file=sys.stderr)
            return 1
    except AdminError as exc:
        print(f"hubbub: {exc}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown rooms command {args.rooms_command!r}")
