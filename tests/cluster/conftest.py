"""Several chat nodes on the machine's real PostgreSQL and Redis.

Each test gets its own PostgreSQL schema and Redis prefix (tests/services.py:
dropped and deleted after; a missing service fails the test with how to start
it). The nodes are in-process ``create_app`` servers on free 127.0.0.1 ports,
each with its own store pool and broker connection (a distinct node id), as
separate ``hubbub serve`` processes would have.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import pytest

from hubbub import Server
from hubbub.apps.chat import create_app
from hubbub.broker.redis import RedisBroker
from hubbub.config import Settings
from tests.broker.proxy import Link, Proxy
from tests.services import REDIS_URL, pg_schema, postgres_store, redis_prefix  # noqa: F401


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], within: float = 10.0, what: str = ""
) -> None:
    """Poll ``check`` until true; fail after ``within`` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.02)


class SlowProxy(Proxy):
    """A proxy that holds every chunk a few milliseconds (in order): a distant Redis,
    so that this node's frames and the others' interleave differently everywhere."""

    def __init__(self, host: str, port: int, delay: float = 0.02) -> None:
        super().__init__(host, port)
        self.delay = delay

    async def _forward(self, data: bytes, link: Link, upstream: bool) -> bool:
        await asyncio.sleep(self.delay)
        return await super()._forward(data, link, upstream)


class Cluster:
    def __init__(self, schema: str, prefix: str) -> None:
        self.schema = schema
        self.prefix = prefix
        self.nodes: list[Server] = []
        self.proxies: list[Proxy] = []

    async def node(
        self,
        *,
        via_proxy: Proxy | None = None,
        store: Any = None,
        broker_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Server:
        name = f"node{len(self.nodes)}"
        url = REDIS_URL
        if via_proxy is not None:
            url = f"redis://127.0.0.1:{via_proxy.port}{urlparse(REDIS_URL).path}"
        overrides.setdefault("rate", 0)
        overrides.setdefault("db", ":memory:")  # not used: the store is PostgreSQL
        options: dict[str, Any] = {"backoff_max": 0.2, "subscribe_timeout": 2.0}
        options.update(broker_options or {})
        broker = RedisBroker(url, prefix=self.prefix, node_id=name, **options)
        server = create_app(
            "127.0.0.1", 0, Settings(**overrides),
            store=store if store is not None else postgres_store(self.schema),
            broker=broker,
        )
        await server.listen()
        self.nodes.append(server)
        return server

    async def proxy(self, delay: float | None = None) -> Proxy:
        target = urlparse(REDIS_URL)
        host, port = target.hostname or "127.0.0.1", target.port or 6379
        proxy = Proxy(host, port) if delay is None else SlowProxy(host, port, delay)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def close(self) -> None:
        for server in self.nodes:
            await server.shutdown()
        for proxy in self.proxies:
            await proxy.close()


@pytest.fixture
async def cluster(pg_schema: str, redis_prefix: str) -> AsyncIterator[Cluster]:  # noqa: F811
    c = Cluster(pg_schema, redis_prefix)
    try:
        yield c
    finally:
        await c.close()
