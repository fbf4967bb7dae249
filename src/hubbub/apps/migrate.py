"""``hubbub migrate --from sqlite:///hubbub.db --to postgresql://...``: copy history.

For a user who outgrows SQLite: every room (its epoch, last seq and private
flag) and every retained message (its seq, id, client id, nick, text, timestamp
and sender's user id) is copied as it is, so clients resume on the new store with the
epoch and seq they hold, and a client id retried after the move is still
recognized as a duplicate.

- The source is opened as ``hubbub serve`` would open it (SQLite: its lock, so a
  server running on it is refused: stop it first, which also makes the copy a
  consistent snapshot). It is read room by room in batches of ``--batch``
  messages, so memory stays bounded whatever the history's size.
- A ``sqlite:///PATH`` source that does not exist is refused (opening it would
  create an empty database and "migrate" nothing).
- The target must be PostgreSQL; its schema is created or migrated first. Each
  batch is one transaction (``ON CONFLICT DO NOTHING``), so an interrupted
  migration can simply be run again: it resumes, copying what is missing. A
  target room with another epoch than the source's (another history) is refused
  unless ``--force``, which replaces that room's history in the target.
- At the end every room is verified: same epoch and last seq, and as many
  messages in the target as were read from the source. Progress goes to stderr.

A room's creation time is not part of the store interface: in the target it is
the time of its oldest copied message (or of the migration, for an empty room).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import asyncpg

from ..config import Settings
from ..errors import StartupError
from ..protocol import Message
from ..store import RoomMeta, Store, StoreError
from ..store.postgres import PostgresStore, insert_messages
from ..store.sqlite import SQLiteStore
from .wiring import build_store

#: Messages per batch by default (one transaction each; ~200 bytes of Python per message).
DEFAULT_BATCH = 5000
#: Rooms listed per page of the source's room list.
ROOM_PAGE = 500
#: Progress is printed after about this many messages.
PROGRESS_EVERY = 50_000


class MigrateError(StartupError):
    """The migration cannot go on; ``str()`` is one line for the operator."""


@dataclass
class Totals:
    rooms: int = 0
    messages: int = 0
    copied: int = 0


class Migration:
    def __init__(
        self, source: Store, target: PostgresStore, batch: int, force: bool, out: TextIO
    ) -> None:
        self.source, self.target = source, target
        self.batch, self.force, self.out = batch, force, out
        self.totals = Totals()
        self._next_report = PROGRESS_EVERY
        #: Room name -> messages read from the source (for the verification).
        self.counts: dict[str, int] = {}

    def say(self, text: str) -> None:
        print(f"hubbub migrate: {text}", file=self.out, flush=True)

    async def source_rooms(self) -> list[RoomMeta]:
        """Every room of the source, a page at a time (names only are kept)."""
        out: list[RoomMeta] = []
        after: str | None = None
        while True:
            page = await self.source.rooms(after, ROOM_PAGE)
            out.extend(page)
            if len(page) < ROOM_PAGE:
                return out
            after = page[-1].name

    async def check_target(self, rooms: list[RoomMeta]) -> None:
        """Refuse a target whose rooms hold another history (unless --force)."""
        epochs = {r.name: r.epoch for r in rooms}
        clashes: list[str] = []
        resumed = 0
        async with self.target.pool.acquire() as conn:
            for row in await conn.fetch("SELECT name, epoch FROM rooms"):
                if row["name"] not in epochs:
                    continue
                if epochs[row["name"]] == row["epoch"]:
                    resumed += 1
                else:
                    clashes.append(row["name"])
        if clashes and not self.force:
            names = ", ".join(repr(n) for n in sorted(clashes)[:5])
            raise MigrateError(
                f"the target already holds {len(clashes)} of these rooms with another "
                f"history (another epoch: {names}); --force replaces their history in the "
                "target, or migrate into an empty schema (?schema=NAME)"
            )
        if clashes:
            self.say(f"--force: replacing {len(clashes)} rooms of the target")
            async with self.target.pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM messages WHERE room = ANY($1::text[])", clashes)
                await conn.execute("DELETE FROM rooms WHERE name = ANY($1::text[])", clashes)
        if resumed:
            self.say(f"resuming: {resumed} rooms are already (partly) in the target")

    async def copy_room(self, meta: RoomMeta) -> None:
        first = await self.source.since(meta.name, 0, 1)
        created = first[0].ts if first else time.time()
        async with self.target.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO rooms (name, epoch, last_seq, created, private) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE "
                "SET last_seq = EXCLUDED.last_seq, private = EXCLUDED.private",
                meta.name, meta.epoch, meta.seq, created, meta.private,
            )  # fmt: skip
        after, count = 0, 0
        while True:
            batch = await self.source.since(meta.name, after, self.batch)
            if not batch:
                break
            self.totals.copied += await self.insert(batch)
            count += len(batch)
            self.totals.messages += len(batch)
            after = batch[-1].seq
            if self.totals.messages >= self._next_report:
                self._next_report += PROGRESS_EVERY
                self.say(
                    f"{self.totals.messages} messages read, {self.totals.copied} copied "
                    f"({self.totals.rooms} rooms done)"
                )
        self.counts[meta.name] = count
        self.totals.rooms += 1

    async def insert(self, batch: list[Message]) -> int:
        async with self.target.pool.acquire() as conn, conn.transaction():
            return await insert_messages(conn, batch, skip_existing=True)

    async def verify(self, rooms: list[RoomMeta]) -> None:
        async with self.target.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT r.name, r.epoch, r.last_seq, r.private, "
                "(SELECT count(*) FROM messages m WHERE m.room = r.name) AS n "
                "FROM rooms r WHERE r.name = ANY($1::text[])",
                [r.name for r in rooms],
            )
        got = {r["name"]: r for r in rows}
        bad: list[str] = []
        for meta in rooms:
            row = got.get(meta.name)
            want = (meta.epoch, meta.seq, meta.private, self.counts[meta.name])
            have = None
            if row is not None:
                have = (row["epoch"], row["last_seq"], row["private"], row["n"])
            if have != want:
                bad.append(f"{meta.name!r}: source {want}, target {have}")
        if bad:
            raise MigrateError(
                f"verification failed for {len(bad)} rooms (epoch, last seq, private, "
                f"messages): {'; '.join(bad[:3])}; run the migration again"
            )

    async def run(self) -> Totals:
        rooms = await self.source_rooms()
        await self.check_target(rooms)
        self.say(f"copying {len(rooms)} rooms")
        for meta in rooms:
            await self.copy_room(meta)
        await self.verify(rooms)
        return self.totals


def _open_target(url: str) -> PostgresStore:
    if not url.split("://", 1)[0].lower().startswith("postgres"):
        raise MigrateError(f"--to must be a postgresql:// URL, not {url.split('://')[0]!r}")
    store = build_store(Settings(store=url))
    assert isinstance(store, PostgresStore)
    return store


def _source_must_exist(source: Store) -> None:
    """Refuse a SQLite source file that is not there: opening it would create an empty
    database, and the migration would report 0 rooms as if it had worked."""
    if not isinstance(source, SQLiteStore) or source.path == ":memory:":
        return
    if not os.path.exists(source.path):
        raise MigrateError(
            f"--from: {source.path} does not exist (sqlite:///PATH is relative to the "
            "current directory, sqlite:////PATH absolute)"
        )
    if not os.path.isfile(source.path):
        raise MigrateError(f"--from: {source.path} is not a file")


async def migrate(
    source_url: str, target_url: str, batch: int, force: bool, out: TextIO
) -> Totals:
    if source_url == target_url:
        raise MigrateError("--from and --to are the same store")
    target = _open_target(target_url)
    source = build_store(Settings(store=source_url))
    _source_must_exist(source)
    await source.open()
    try:
        await target.open()
        try:
            return await Migration(source, target, batch, force, out).run()
        finally:
            await target.close()
    finally:
        await source.close()


def add_migrate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hubbub migrate`` to the CLI's subparsers."""
    cmd = sub.add_parser(
        "migrate",
        help="copy the history to PostgreSQL (epochs and seqs kept)",
        description="Copy every room and message from --from (sqlite:///PATH, no server "
        "running on it) to --to (postgresql://...; the schema is created): epochs, "
        "sequence numbers, client ids and timestamps kept, so clients resume where they "
        "were. Batched (bounded memory), resumable (run it again after an interruption), "
        "verified at the end. Then start hubbub serve --store with the --to URL.",
    )
    cmd.add_argument("--from", dest="source", required=True, metavar="URL", help="source store")
    cmd.add_argument("--to", dest="target", required=True, metavar="URL", help="target store")
    cmd.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"messages per transaction (default {DEFAULT_BATCH})",
    )
    cmd.add_argument(
        "--force",
        action="store_true",
        help="replace the target's rooms that hold another history (another epoch)",
    )


def run_migrate_command(args: argparse.Namespace) -> int:
    """Run ``hubbub migrate``; errors are one line on stderr and exit status 1."""
    if not 1 <= args.batch <= 100_000:
        print("hubbub: error: --batch must be 1 to 100000", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        totals = asyncio.run(
            migrate(args.source, args.target, args.batch, args.force, sys.stderr)
        )
    except (StartupError, StoreError) as exc:
        print(f"hubbub: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"hubbub: error: PostgreSQL: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(
        f"migrated {totals.rooms} rooms, {totals.messages} messages ({totals.copied} copied "
        f"now) in {time.monotonic() - started:.1f} s; verified",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hubbub.apps.migrate --from ... --to ...`` (what ``hubbub migrate`` runs)."""
    parser = argparse.ArgumentParser(prog="hubbub")
    add_migrate_command(parser.add_subparsers(dest="command", required=True))
    args = sys.argv[1:] if argv is None else argv
    return run_migrate_command(parser.parse_args(["migrate", *args]))


if __name__ == "__main__":
    sys.exit(main())
