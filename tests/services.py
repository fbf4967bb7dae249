"""The machine's real PostgreSQL and Redis for the store and broker tests.

Each test gets its own PostgreSQL schema (random name, dropped after) and its
own Redis key/channel prefix (random, its keys deleted after). A service that
cannot be reached FAILS the test with the command that starts it: these tests
hold the scale-out adapters to the same contract as the embedded ones, and a
silent skip would hide that they never ran.

Override the addresses with ``HUBBUB_TEST_POSTGRES`` / ``HUBBUB_TEST_REDIS``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from hubbub.store import Store
from hubbub.store.postgres import PostgresStore
from hubbub.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent

PG_DSN = os.environ.get("HUBBUB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HUBBUB_TEST_REDIS", "redis://127.0.0.1:6379/0")

PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


# -- PostgreSQL ------------------------------------------------------------------------


async def pg_connect() -> asyncpg.Connection:
    """An admin connection to the test database; fails the test if there is none."""
    try:
        return await asyncpg.connect(PG_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_DSN} ({type(exc).__name__}: {exc}).\n"
            f"Start it with:  {PG_START}\n"
            "(user postgres, trust auth on 127.0.0.1, database 'test': "
            "createdb -h 127.0.0.1 -U postgres test)",
            pytrace=False,
        )


async def _drop_schema(name: str) -> None:
    conn = await pg_connect()
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def _check_postgres() -> None:
    conn = await pg_connect()
    await conn.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema name (the store creates the schema); dropped after the test."""
    asyncio.run(_check_postgres())
    name = f"hubbub_test_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        asyncio.run(_drop_schema(name))


def postgres_store(schema: str, **kwargs: Any) -> PostgresStore:
    """A store in ``schema``; its connections are named ``hubbub-<schema>``."""
    kwargs.setdefault("application_name", f"hubbub-{schema}")
    return PostgresStore(PG_DSN, schema=schema, **kwargs)


# -- Redis -------------------------------------------------------------------------------


def redis_client() -> redis.Redis:
    """A synchronous client of the test Redis; fails the test if it does not answer."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({type(exc).__name__}: {exc}).\n"
            f"Start it with:  {REDIS_START}",
            pytrace=False,
        )
    return client


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A random key and channel prefix; keys under it are deleted after the test."""
    client = redis_client()
    prefix = f"hubbub-test-{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# -- building a store from a picklable description (also in a child process) -------------


def make_store(spec: dict[str, str]) -> Store:
    """``{"kind": "sqlite", "path": ...}`` or ``{"kind": "postgres", "schema": ...}``."""
    if spec["kind"] == "sqlite":
        return SQLiteStore(spec["path"])
    if spec["kind"] == "postgres":
        return postgres_store(spec["schema"])
    raise ValueError(f"unknown store kind {spec['kind']!r}")
