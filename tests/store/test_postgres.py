"""What only the PostgreSQL store does: several nodes on one database, a lost backend,
schema versions in a shared database. (The Store contract is in test_contract.py.)"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from hubbub.protocol import Message
from hubbub.store import PendingMessage, StoreError
from hubbub.store.postgres import SCHEMA_VERSION, PostgresStore
from tests.services import PG_DSN, pg_connect, postgres_store


@pytest.fixture
async def admin(pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await pg_connect()
    await conn.execute(f'SET search_path TO "{pg_schema}"')
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def nodes(pg_schema: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores, two pools: two hubbub nodes sharing one database."""
    stores = [postgres_store(pg_schema, max_size=4) for _ in range(2)]
    await asyncio.gather(*(s.open() for s in stores))  # both migrate at once: one wins
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def wait_for(cond: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def backend_pid(store: PostgresStore) -> int:
    return int(await store.pool.fetchval("SELECT pg_backend_pid()"))


# ---------------------------------------------------------------------------
# several nodes


async def test_two_nodes_number_gaplessly_and_deduplicate_across_each_other(
    nodes: list[PostgresStore],
) -> None:
    rooms = [f"room{i}" for i in range(4)]
    results: list[tuple[PendingMessage, Message, bool]] = []

    async def writer(node: PostgresStore, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            batch = []
            for _ in range(rng.randrange(1, 12)):
                # Client ids come from a shared space: the same id reaches both nodes
                # (a client that retried against another node).
                cid = rng.choice([None, f"c{rng.randrange(150)}"])
                batch.append(PendingMessage(rng.choice(rooms), cid, "n", f"s{seed}", 1.0))
            out = await node.append(batch)
            results.extend((p, m, dup) for p, (m, dup) in zip(batch, out, strict=True))

    # 8 writers, 4 per node: every pool connection busy, rooms locked in every order.
    await asyncio.wait_for(
        asyncio.gather(*(writer(nodes[i % 2], i) for i in range(8))), timeout=90
    )

    stored = {room: await nodes[0].since(room, 0, 100_000) for room in rooms}
    for room, msgs in stored.items():
        assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1)), room
        cids = [m.client_id for m in msgs if m.client_id is not None]
        assert len(cids) == len(set(cids)), f"a client id stored twice in {room}"
        assert await nodes[1].since(room, 0, 100_000) == msgs  # both nodes see the same log
    by_key = {(m.room, m.seq): m for msgs in stored.values() for m in msgs}
    new = [m for _, m, dup in results if not dup]
    assert len(new) == len(by_key)  # every number handed out once, and every one stored
    for pending, msg, dup in results:
        assert by_key[(msg.room, msg.seq)] == msg
        assert msg.room == pending.room
        if dup:
            assert pending.client_id is not None and msg.client_id == pending.client_id
        else:
            assert msg.text == pending.text
    assert any(dup for _, _, dup in results)  # the shared id space did produce duplicates


async def test_nodes_see_each_others_reset_and_delete(nodes: list[PostgresStore]) -> None:
    a, b = nodes
    await a.append([PendingMessage("r", "x", "n", "t", 1.0)])
    new = await b.reset("r")
    [(msg, dup)] = await a.append([PendingMessage("r", "x", "n", "t", 1.0)])
    assert (msg.seq, msg.epoch, dup) == (1, new.epoch, False)
    assert await b.delete_room("r") is True
    assert await a.room("r") is None


async def test_a_room_deleted_while_a_batch_waits_for_its_lock_is_created_again(
    nodes: list[PostgresStore], admin: asyncpg.Connection
) -> None:
    a, _ = nodes
    [(first, _)] = await a.append([PendingMessage("r", "x", "n", "t", 1.0)])
    tx = admin.transaction()
    await tx.start()
    await admin.execute("SELECT 1 FROM rooms WHERE name = 'r' FOR UPDATE")
    pending = asyncio.ensure_future(a.append([PendingMessage("r", "y", "n", "t", 2.0)]))

    async def blocked() -> bool:
        # Activity is a snapshot per transaction (and admin is in one): take a new one.
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        n = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%FOR UPDATE%' AND pid <> pg_backend_pid()"
        )
        return bool(n)

    await wait_for(blocked)
    await admin.execute("DELETE FROM rooms WHERE name = 'r'")
    await admin.execute("DELETE FROM messages WHERE room = 'r'")
    await tx.commit()
    [(msg, dup)] = await asyncio.wait_for(pending, 10)
    assert (msg.seq, dup) == (1, False)
    assert msg.epoch != first.epoch
    assert await a.since("r", 0, 10) == [msg]


# ---------------------------------------------------------------------------
# a lost backend


async def test_a_killed_backend_fails_that_batch_and_the_next_one_works(
    pg_schema: str, admin: asyncpg.Connection
) -> None:
    store = postgres_store(pg_schema, max_size=1)
    await store.open()
    try:
        await store.append([PendingMessage("r", "1", "n", "t", 1.0)])
        pid = await backend_pid(store)
        # Hold the room's lock so that the next batch is inside its transaction...
        tx = admin.transaction()
        await tx.start()
        await admin.execute("SELECT 1 FROM rooms WHERE name = 'r' FOR UPDATE")
        pending = asyncio.ensure_future(store.append([PendingMessage("r", "2", "n", "t", 2.0)]))

        async def waiting() -> bool:
            await admin.execute("SELECT pg_stat_clear_snapshot()")
            event = await admin.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
            )
            return bool(event == "Lock")

        await wait_for(waiting)
        # ...and kill its backend there.
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreError, match="postgres"):
            await asyncio.wait_for(pending, 10)
        await tx.rollback()
        [(msg, dup)] = await store.append([PendingMessage("r", "3", "n", "t", 3.0)])
        assert (msg.seq, dup) == (2, False)  # the failed batch took no number
        assert [m.client_id for m in await store.since("r", 0, 10)] == ["1", "3"]
        assert await backend_pid(store) != pid  # the pool connected again
    finally:
        await store.close()


async def test_killing_every_backend_mid_traffic_loses_nothing_acknowledged(
    pg_schema: str, admin: asyncpg.Connection
) -> None:
    store = postgres_store(pg_schema, max_size=3)
    await store.open()
    acked: list[Message] = []
    failures = 0
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        nonlocal failures
        for n in range(10_000):
            if stop.is_set():
                return
            batch = [PendingMessage("r", f"w{w}-{n}-{i}", "n", "t", 1.0) for i in range(3)]
            try:
                acked.extend(m for m, _ in await store.append(batch))
            except StoreError:
                failures += 1

    try:
        tasks = [asyncio.ensure_future(writer(w)) for w in range(3)]
        await wait_for(lambda: _true(len(acked) >= 30))
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            f"hubbub-{pg_schema}",
        )
        assert killed >= 1
        mark = len(acked)
        await wait_for(lambda: _true(len(acked) >= mark + 30))  # traffic carries on
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        stored = await store.since("r", 0, 1_000_000)
        assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
        by_seq = {m.seq: m for m in stored}
        for m in acked:
            assert by_seq[m.seq] == m
    finally:
        await store.close()


async def _true(value: bool) -> bool:
    return value


async def test_reads_come_back_after_a_killed_connection(
    pg_schema: str, admin: asyncpg.Connection
) -> None:
    store = postgres_store(pg_schema, max_size=1)
    await store.open()
    try:
        await store.append([PendingMessage("r", None, "n", "t", 1.0)])
        pid = await backend_pid(store)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        # The idle pooled connection died; a read is retried on a new one.
        assert [m.seq for m in await store.since("r", 0, 10)] == [1]
        assert (await store.room("r")) is not None
    finally:
        await store.close()


# ---------------------------------------------------------------------------
# schema versions, configuration, unreachable server


async def test_schema_version_is_recorded_and_not_migrated_twice(
    pg_schema: str, admin: asyncpg.Connection
) -> None:
    for _ in range(2):
        store = postgres_store(pg_schema)
        await store.open()
        await store.append([PendingMessage("r", None, "n", "t", 1.0)])
        await store.close()
    assert await admin.fetch("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert await admin.fetchval("SELECT count(*) FROM messages") == 2


async def test_a_newer_schema_is_refused_untouched(
    pg_schema: str, admin: asyncpg.Connection
) -> None:
    await admin.execute(f'CREATE SCHEMA "{pg_schema}"')
    await admin.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    await admin.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION + 1)
    store = postgres_store(pg_schema)
    with pytest.raises(StoreError, match="upgrade hubbub") as info:
        await store.open()
    assert f"version {SCHEMA_VERSION + 1}" in str(info.value)
    tables = await admin.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", pg_schema
    )
    assert [t["tablename"] for t in tables] == ["schema_version"]
    with pytest.raises(StoreError, match="not open"):
        await store.rooms()


async def test_unreachable_server_is_a_store_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=5)
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL at"):
        await store.open()


def test_password_is_not_shown_in_errors() -> None:
    store = PostgresStore("postgresql://u:secret@127.0.0.1:1/test")
    assert "secret" not in store._where()


@pytest.mark.parametrize(
    "kwargs",
    [{"schema": "bad name"}, {"schema": 'x"; DROP'}, {"min_size": 0}, {"timeout": 0}],
)
def test_bad_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PostgresStore(PG_DSN, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# the leader lock across nodes


async def test_leader_lock_is_one_node_at_a_time(nodes: list[PostgresStore]) -> None:
    a, b = nodes
    async with a.leader("retention") as leading_a:
        assert leading_a
        async with b.leader("retention") as leading_b:
            assert not leading_b  # the other node skips the job
        async with b.leader("backfill") as other:
            assert other
    async with b.leader("retention") as leading_b:
        assert leading_b  # released at the end of a's block
        async with a.leader("retention") as leading_a:
            assert not leading_a


async def test_leader_lock_is_per_schema(nodes: list[PostgresStore], pg_schema: str) -> None:
    other_schema = f"{pg_schema}_x"
    other = postgres_store(other_schema)
    await other.open()
    try:
        async with nodes[0].leader("retention") as here, other.leader("retention") as there:
            assert here and there  # another cluster (schema) does not contend
    finally:
        await other.close()
        conn = await pg_connect()
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')
        finally:
            await conn.close()


async def test_a_dead_leaders_lock_is_released(
    nodes: list[PostgresStore], admin: asyncpg.Connection, pg_schema: str
) -> None:
    """The holder's connection dies (its process killed, its backend terminated):
    PostgreSQL drops the lock, another node leads on its next try."""
    a, b = nodes
    async with a.leader("retention") as leading:
        assert leading
        # This test's connections only (named after its schema), never another's.
        holders = await admin.fetch(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.granted "
            "AND a.application_name = $2",
            0x6875_6263,
            f"hubbub-{pg_schema}",
        )
        assert len(holders) == 1
        for row in holders:
            await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])

        async def b_leads() -> bool:
            async with b.leader("retention") as got:
                return got

        await wait_for(b_leads)
    # The dead connection's unlock failed quietly; a's pool works on.
    async with a.leader("retention") as again:
        assert again
