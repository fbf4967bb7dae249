"""Retention runs once per cluster: only the node holding the store's leader lock
deletes; the others skip that tick (real PostgreSQL: two stores, two pools)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubbub.apps.retention import LOCK_NAME, Retention
from hubbub.store import PendingMessage, Store
from hubbub.store.postgres import PostgresStore
from hubbub.store.sqlite import SQLiteStore
from tests.services import pg_schema, postgres_store  # noqa: F401 (fixture)


@pytest.fixture
async def nodes(pg_schema: str) -> AsyncIterator[list[PostgresStore]]:  # noqa: F811
    stores = [postgres_store(pg_schema) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def fill(store: Store, n: int) -> None:
    await store.append([PendingMessage("r", f"c{i}", "ann", f"m{i}", 1000.0) for i in range(n)])


async def oldest(store: Store) -> int:
    meta = await store.room("r")
    assert meta is not None
    return meta.oldest


async def test_only_the_lock_holder_deletes(nodes: list[PostgresStore]) -> None:
    a, b = nodes
    await fill(a, 10)
    rb = Retention(b, 3, 0)
    async with a.leader(LOCK_NAME) as held:  # node a is mid-run (its job holds the lock)
        assert held
        await rb.run()
        assert (rb.runs, rb.skipped) == (0, 1)
        assert await oldest(b) == 1  # b deleted nothing
    await rb.run()  # the lock is free: b leads this tick
    assert (rb.runs, rb.skipped) == (1, 1)
    assert await oldest(a) == 8


async def test_nodes_ticking_together_run_it_once_at_a_time(nodes: list[PostgresStore]) -> None:
    a, b = nodes
    await fill(a, 5)
    workers = [Retention(s, 1, 0) for s in (a, a, b, b)]
    await asyncio.gather(*(r.run() for r in workers))
    assert sum(r.runs for r in workers) + sum(r.skipped for r in workers) == 4
    assert sum(r.runs for r in workers) >= 1
    assert await oldest(b) == 5


async def test_a_store_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "h.db")  # never opened: every call fails
    with caplog.at_level(logging.ERROR, "hubbub.chat"):
        await Retention(store, 3, 0).run()
    assert "retention failed" in caplog.text and "not open" in caplog.text


async def test_no_limits_takes_no_lock(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    try:
        r = Retention(store, 0, 0)
        await r.run()
        assert (r.runs, r.skipped) == (0, 0)
    finally:
        await store.close()
