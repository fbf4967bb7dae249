"""A TCP proxy in front of Redis that a test can cut or freeze (no tc/netem here)."""

from __future__ import annotations

import asyncio
import contextlib


class Link:
    """One client connection through the proxy, both directions. ``marked`` is free for
    a subclass to set from what goes by (e.g. "this is a subscriber connection")."""

    def __init__(self) -> None:
        self.marked = False


class Proxy:
    """Forwards 127.0.0.1:<port> to ``target``. ``cut()`` drops every connection and
    refuses new ones until ``resume()``; ``freeze()`` keeps connections open but stops
    forwarding (a peer that vanished without a reset).

    A subclass changes what goes through by overriding ``_forward`` alone."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.frozen = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        link = Link()
        for src, dst, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, link, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forward(self, data: bytes, link: Link, upstream: bool) -> bool:
        """Whether ``data`` goes on (``upstream``: client to Redis; else Redis's reply).
        May wait first: chunks of one direction stay in order. Frozen: swallowed, the
        peer looks alive but never answers."""
        return not self.frozen

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: Link, upstream: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if await self._forward(data, link, upstream):
                    dst.write(data)
                    await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_all()

    async def resume(self) -> None:
        self.frozen = False
        if self._server is None:
            await self.start()

    def freeze(self) -> None:
        self.frozen = True

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
