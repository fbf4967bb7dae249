"""The shared store: PostgreSQL through an asyncpg pool, for several hubbub nodes.

PostgreSQL is the store of record when hubbub runs on more than one node: it
assigns every message's ``seq`` and ``epoch`` and removes duplicate client ids,
so every node sees the same numbering.

Numbering is gapless and strictly increasing per room with any number of
writers. One ``append`` batch is one transaction that

1. creates the batch's missing rooms (``INSERT ... ON CONFLICT DO NOTHING``),
2. locks the batch's room rows with ``SELECT ... FOR UPDATE``, in one fixed
   order (room names in byte order, ``COLLATE "C"``) so that two batches never
   wait on each other crosswise (no deadlock),
3. looks the batch's client ids up under that lock (no other writer can add
   one to these rooms until the commit),
4. takes ``last_seq + 1 ...`` for the new messages, inserts them (``unnest``)
   and moves ``last_seq``, then commits.

A sequence (``nextval``) would not do: an aborted transaction leaves a hole.

Errors (connection lost, server restarted, constraint broken) surface as
:class:`StoreError`. The pool replaces broken connections, so the next call
works once PostgreSQL is back. A batch is retried on a fresh connection only
when it failed before its transaction began (nothing can have been written);
after that its outcome is unknown to us (a connection lost during ``COMMIT``)
and it fails: the client retries with the same client id, which the store
deduplicates. Reads are retried once on a lost connection.

Schema versions: ``schema_version`` holds the version; ``MIGRATIONS[n]`` takes
the schema from version n to n + 1, under a transaction-scoped advisory lock so
that nodes starting together migrate once. A schema newer than this code is
refused before anything is changed. ``schema=`` puts hubbub's tables in their
own PostgreSQL schema (``search_path``), created if missing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from ..protocol import Message
from .base import PendingMessage, RoomMeta, StoreError, stored_message, user_of

T = TypeVar("T")

log = logging.getLogger("hubbub.store")

# Never edit a released step; append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE rooms (
        name     TEXT PRIMARY KEY,
        epoch    TEXT NOT NULL,
        last_seq BIGINT NOT NULL DEFAULT 0,
        created  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE messages (
        room      TEXT NOT NULL,
        seq       BIGINT NOT NULL,
        id        TEXT NOT NULL,
        client_id TEXT,
        nick      TEXT NOT NULL,
        text      TEXT NOT NULL,
        ts        DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (room, seq)
    );
    CREATE UNIQUE INDEX messages_client_id ON messages (room, client_id)
        WHERE client_id IS NOT NULL;
    CREATE INDEX messages_ts ON messages (ts);
    """,
    # 2: private rooms (history and members for members only).
    """
    ALTER TABLE rooms ADD COLUMN private BOOLEAN NOT NULL DEFAULT FALSE;
    """,
    # 3: the sender's user id (a token's ``sub``; NULL for an anonymous sender).
    # ``user`` is a reserved word in PostgreSQL: always quoted.
    """
    ALTER TABLE messages ADD COLUMN "user" TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: Advisory lock namespace (first key) for migrations; the second key is the schema's hash.
_MIGRATION_LOCK = 0x6875_6262  # "hubb"
#: Advisory lock namespace for :meth:`PostgresStore.leader`; the second key hashes
#: the schema and the job's name.
_LEADER_LOCK = 0x6875_6263

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: Errors that mean "the connection is gone", after which a fresh one may work.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
    ConnectionError,
)
#: What a pooled connection the server has dropped raises on its next use: the
#: FATAL of a terminated backend may arrive just before the next query
#: ("another operation is in progress"). A read, or a transaction that has not
#: begun, is then safe to run again on a new connection.
_STALE_ERRORS: tuple[type[BaseException], ...] = (
    *_CONNECTION_ERRORS,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
#: Everything asyncpg (and the network under it) may raise for a failed operation.
_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

_COLUMNS = 'm.room, m.seq, r.epoch, m.id, m.nick, m.text, m.ts, m.client_id, m."user"'
_ROOM_META = (
    "SELECT r.name, r.epoch, r.last_seq, r.private, "
    "(SELECT min(seq) FROM messages WHERE room = r.name) AS oldest FROM rooms r"
)


async def insert_messages(
    conn: asyncpg.Connection, messages: list[Message], skip_existing: bool = False
) -> int:
    """Insert ``messages`` (numbered already) in one statement; how many rows went in.
    ``skip_existing`` leaves rows whose (room, seq) is there already (hubbub migrate)."""
    status = await conn.execute(
        'INSERT INTO messages (room, seq, id, client_id, nick, text, ts, "user") '
        "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], "
        "$5::text[], $6::text[], $7::float8[], $8::text[])"
        + (" ON CONFLICT DO NOTHING" if skip_existing else ""),
        [m.room for m in messages],
        [m.seq for m in messages],
        [m.id for m in messages],
        [m.client_id for m in messages],
        [m.nick for m in messages],
        [m.text for m in messages],
        [m.ts for m in messages],
        [user_of(m) for m in messages],
    )
    return int(status.split()[-1])


def _new_epoch() -> str:
    return uuid.uuid4().hex[:12]


def _meta(row: Any) -> RoomMeta:
    oldest = row["oldest"]
    return RoomMeta(
        row["name"], row["epoch"], row["last_seq"], oldest or row["last_seq"] + 1, row["private"]
    )


def _message(row: Any) -> Message:
    return stored_message(*row)


class PostgresStore:
    """``PostgresStore(dsn, *, schema=None, min_size=1, max_size=4, timeout=10.0,
    application_name="hubbub")``.

    ``dsn`` is a libpq URL (``postgresql://user@host:5432/db``); ``schema`` the
    PostgreSQL schema for hubbub's tables (letters, digits, ``_``; default: the
    server's ``search_path``); ``min_size``/``max_size`` bound the pool;
    ``timeout`` bounds connecting and every statement, in seconds;
    ``application_name`` names the connections in ``pg_stat_activity``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 10.0,
        application_name: str = "hubbub",
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must be letters, digits and _ (at most 63), not {schema!r}")
        if not 1 <= min_size <= max_size:
            raise ValueError("need 1 <= min_size <= max_size")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.application_name = application_name
        self._pool: asyncpg.Pool | None = None

    def _where(self) -> str:
        """The DSN without its password, for error messages."""
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", self.dsn)

    # -- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create or migrate the schema; StoreError if the database cannot be
        reached or holds a schema newer than this code."""
        if self._pool is not None:
            return
        settings = {"application_name": self.application_name}
        if self.schema is not None:
            settings["search_path"] = self.schema
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.timeout,
                command_timeout=self.timeout,
                server_settings=settings,
            )
        except (*_ERRORS, ValueError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self._where()}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, _ERRORS):
                raise StoreError(f"postgres: {exc}") from exc
            raise
        self._pool = pool

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            if self.schema is not None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", _MIGRATION_LOCK, self.schema
                )
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise StoreError("postgres: no schema to create tables in (check search_path)")
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _MIGRATION_LOCK, schema
            )
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_tables "
                "WHERE schemaname = current_schema() AND tablename = 'schema_version')"
            )
            version = 0
            if exists:
                version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL schema {schema!r} at {self._where()} has schema version "
                    f"{version}, newer than this hubbub ({SCHEMA_VERSION}); upgrade hubbub"
                )
            if not exists:
                await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for step in range(version, SCHEMA_VERSION):
                await conn.execute(MIGRATIONS[step])
            if version < SCHEMA_VERSION:
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await pool.close()
        except _ERRORS:
            pool.terminate()

    # -- running statements -------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read; once more on a fresh connection if the first one was dead."""
        for attempt in (1, 2):
            try:
                async with self.pool.acquire() as conn:
                    try:
                        return await fn(conn)
                    except _STALE_ERRORS:
                        if attempt == 2:
                            raise
                        _discard(conn)
            except _ERRORS as exc:
                raise _store_error(exc) from exc
        raise AssertionError("unreachable")

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction. Retried on a fresh connection only if the
        transaction could not even begin (so nothing was written)."""
        try:
            for attempt in (1, 2):
                async with self.pool.acquire() as conn:
                    tx = conn.transaction()
                    try:
                        await tx.start()
                    except _STALE_ERRORS:
                        if attempt == 2:
                            raise
                        _discard(conn)
                        continue
                    try:
                        result = await fn(conn)
                    except BaseException:
                        if not conn.is_closed():
                            try:
                                await tx.rollback()
                            except _ERRORS:
                                _discard(conn)
                        raise
                    await tx.commit()
                    return result
        except _ERRORS as exc:
            raise _store_error(exc) from exc
        raise AssertionError("unreachable")

    # -- writes ---------------------------------------------------------------------

    async def append(self, batch: list[PendingMessage]) -> list[tuple[Message, bool]]:
        if not batch:
            self.pool  # noqa: B018 (a closed store refuses work, even an empty batch)
            return []
        # A room deleted between our INSERT and our lock leaves its row missing:
        # roll back and take the locks again (rare; bounded).
        for _ in range(5):
            try:
                return await self._write(lambda conn: self._append(conn, batch))
            except _RoomVanished:
                continue
        raise StoreError("postgres: rooms kept disappearing under the batch; retry")

    async def _append(
        self, conn: asyncpg.Connection, batch: list[PendingMessage]
    ) -> list[tuple[Message, bool]]:
        names = sorted({p.room for p in batch}, key=lambda n: n.encode())
        await conn.execute(
            "INSERT INTO rooms (name, epoch, last_seq, created) "
            "SELECT n, e, 0, $3 FROM unnest($1::text[], $2::text[]) AS t(n, e) "
            "ON CONFLICT (name) DO NOTHING",
            names,
            [_new_epoch() for _ in names],
            time.time(),
        )
        locked = await conn.fetch(
            "SELECT name, epoch, last_seq FROM rooms WHERE name = ANY($1::text[]) "
            'ORDER BY name COLLATE "C" FOR UPDATE',
            names,
        )
        if len(locked) != len(names):
            raise _RoomVanished
        rooms = {r["name"]: [r["epoch"], r["last_seq"]] for r in locked}
        keyed = [(p.room, p.client_id) for p in batch if p.client_id is not None]
        known: dict[tuple[str, str], Message] = {}
        if keyed:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM messages m JOIN rooms r ON r.name = m.room "
                "JOIN unnest($1::text[], $2::text[]) AS k(room, cid) "
                "ON m.room = k.room AND m.client_id = k.cid",
                [k[0] for k in keyed],
                [k[1] for k in keyed],
            )
            for row in rows:
                msg = _message(row)
                known[(msg.room, msg.client_id)] = msg  # type: ignore[index]
        out: list[tuple[Message, bool]] = []
        new: list[Message] = []
        for p in batch:
            key = (p.room, p.client_id) if p.client_id is not None else None
            if key is not None and key in known:
                out.append((known[key], True))
                continue
            room = rooms[p.room]
            room[1] += 1
            epoch, seq, mid = room[0], room[1], uuid.uuid4().hex
            msg = stored_message(p.room, seq, epoch, mid, p.nick, p.text, p.ts, p.client_id, p.user)
            if key is not None:
                known[key] = msg
            new.append(msg)
            out.append((msg, False))
        if new:
            await insert_messages(conn, new)
            touched = sorted({m.room for m in new}, key=lambda n: n.encode())
            await conn.execute(
                "UPDATE rooms SET last_seq = t.seq "
                "FROM unnest($1::text[], $2::bigint[]) AS t(name, seq) WHERE rooms.name = t.name",
                touched,
                [rooms[n][1] for n in touched],
            )
        return out

    async def create_room(self, room: str) -> RoomMeta:
        meta = await self.room(room)
        if meta is not None:
            return meta

        async def create(conn: asyncpg.Connection) -> RoomMeta:
            # DO UPDATE (not NOTHING) so that the row is returned, and locked, either way.
            row = await conn.fetchrow(
                "INSERT INTO rooms (name, epoch, last_seq, created) VALUES ($1, $2, 0, $3) "
                "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name "
                "RETURNING name, epoch, last_seq, private",
                room,
                _new_epoch(),
                time.time(),
            )
            oldest = await conn.fetchval("SELECT min(seq) FROM messages WHERE room = $1", room)
            return RoomMeta(
                room, row["epoch"], row["last_seq"], oldest or row["last_seq"] + 1, row["private"]
            )

        return await self._write(create)

    async def delete_room(self, room: str) -> bool:
        async def delete(conn: asyncpg.Connection) -> bool:
            # The room row first (the lock every append takes first), then its messages.
            gone = await conn.fetchval("DELETE FROM rooms WHERE name = $1 RETURNING 1", room)
            await conn.execute("DELETE FROM messages WHERE room = $1", room)
            return gone is not None

        return await self._write(delete)

    async def reset(self, room: str) -> RoomMeta:
        epoch = _new_epoch()

        async def reset(conn: asyncpg.Connection) -> RoomMeta:
            private = await conn.fetchval(
                "INSERT INTO rooms (name, epoch, last_seq, created) VALUES ($1, $2, 0, $3) "
                "ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch, last_seq = 0 "
                "RETURNING private",
                room,
                epoch,
                time.time(),
            )
            await conn.execute("DELETE FROM messages WHERE room = $1", room)
            return RoomMeta(room, epoch, 0, 1, private)

        return await self._write(reset)

    async def set_private(self, room: str, private: bool) -> bool:
        async def update(conn: asyncpg.Connection) -> bool:
            found = await conn.fetchval(
                "UPDATE rooms SET private = $2 WHERE name = $1 RETURNING 1", room, private
            )
            return found is not None

        return await self._write(update)

    @contextlib.asynccontextmanager
    async def leader(self, name: str) -> AsyncIterator[bool]:
        """A session-level ``pg_try_advisory_lock`` on a connection of its own, held
        for the block: PostgreSQL releases it if this process (or the connection)
        dies. The lock cannot be taken (PostgreSQL away) is False: the job is skipped
        this time, and runs on the next tick wherever the lock is free."""
        try:
            conn = await self.pool.acquire(timeout=self.timeout)
        except _ERRORS as exc:
            log.warning("leader lock %r: cannot reach PostgreSQL: %s", name, exc)
            yield False
            return
        try:
            try:
                held = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, hashtext(current_schema() || ':' || $2))",
                    _LEADER_LOCK,
                    name,
                )
            except _ERRORS as exc:
                log.warning("leader lock %r: %s", name, exc)
                _discard(conn)
                held = False
            try:
                yield bool(held)
            finally:
                if held:
                    await _unlock(conn, name)
        finally:
            with contextlib.suppress(*_ERRORS):
                await self.pool.release(conn)

    async def enforce_retention(self, max_count: int, max_age: float, now: float) -> int:
        async def retention(conn: asyncpg.Connection) -> int:
            deleted = 0
            if max_count > 0:
                status = await conn.execute(
                    "DELETE FROM messages m USING rooms r "
                    "WHERE m.room = r.name AND m.seq <= r.last_seq - $1",
                    max_count,
                )
                deleted += int(status.split()[-1])
            if max_age > 0:
                status = await conn.execute("DELETE FROM messages WHERE ts < $1", now - max_age)
                deleted += int(status.split()[-1])
            return deleted

        return await self._write(retention)

    # -- reads ----------------------------------------------------------------------

    async def since(self, room: str, seq: int, limit: int) -> list[Message]:
        async def since(conn: asyncpg.Connection) -> list[Message]:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM messages m JOIN rooms r ON r.name = m.room "
                "WHERE m.room = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3",
                room,
                seq,
                limit,
            )
            return [_message(r) for r in rows]

        return await self._read(since)

    async def page(self, room: str, before: int | None, limit: int) -> tuple[list[Message], bool]:
        bound = before if before is not None else 2**62

        async def page(conn: asyncpg.Connection) -> tuple[list[Message], bool]:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM messages m JOIN rooms r ON r.name = m.room "
                "WHERE m.room = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3",
                room,
                bound,
                limit + 1,
            )
            return [_message(r) for r in reversed(rows[:limit])], len(rows) > limit

        return await self._read(page)

    async def room(self, room: str) -> RoomMeta | None:
        async def one(conn: asyncpg.Connection) -> RoomMeta | None:
            row = await conn.fetchrow(f"{_ROOM_META} WHERE r.name = $1", room)
            return _meta(row) if row is not None else None

        return await self._read(one)

    async def rooms(self, after: str | None = None, limit: int | None = None) -> list[RoomMeta]:
        async def every(conn: asyncpg.Connection) -> list[RoomMeta]:
            rows = await conn.fetch(
                f'{_ROOM_META} WHERE r.name COLLATE "C" > $1 ORDER BY r.name COLLATE "C" '
                "LIMIT $2",
                "" if after is None else after,
                limit,  # NULL: no limit
            )
            return [_meta(r) for r in rows]

        return await self._read(every)


class _RoomVanished(Exception):
    """A room of the batch was deleted between creating and locking it."""


async def _unlock(conn: asyncpg.Connection, name: str) -> None:
    """Release a leader lock; if that fails, end the session (which releases it)."""
    try:
        await conn.fetchval(
            "SELECT pg_advisory_unlock($1, hashtext(current_schema() || ':' || $2))",
            _LEADER_LOCK,
            name,
        )
    except _ERRORS:
        _discard(conn)


def _discard(conn: asyncpg.Connection) -> None:
    """Close a connection in a doubtful state; the pool opens a new one in its place."""
    with contextlib.suppress(asyncpg.InterfaceError):
        if not conn.is_closed():
            conn.terminate()


def _store_error(exc: BaseException) -> StoreError:
    return StoreError(f"postgres: {type(exc).__name__}: {exc}")
