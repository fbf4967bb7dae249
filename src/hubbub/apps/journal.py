"""Group commit: messages accepted in the same moment become durable together.

``submit()`` queues a message; one writer task takes everything queued
(up to ``max_batch``), makes it durable in one store transaction, then hands
the results, in order, to ``on_commit``. So a message is stored before
anything acks or broadcasts it, and commits are strictly ordered: every
room's messages are published in sequence order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .. import metrics
from ..protocol import Message
from ..store.base import PendingMessage, Store

log = logging.getLogger("hubbub.journal")

#: ``on_commit([(message, duplicate, token), ...])`` in commit order.
OnCommit = Callable[[list[tuple[Message, bool, Any]]], None]
#: ``on_failure([(pending, token), ...], exc)``: the batch was not stored.
OnFailure = Callable[[list[tuple[PendingMessage, Any]], Exception], None]


class Journal:
    def __init__(
        self,
        store: Store,
        on_commit: OnCommit,
        on_failure: OnFailure,
        *,
        max_queue: int = 50_000,
        max_batch: int = 2_000,
    ) -> None:
        self.store = store
        self.on_commit = on_commit
        self.on_failure = on_failure
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._queue: list[tuple[PendingMessage, Any]] = []
        # The idle writer's wake-up (a bare future: no asyncio.Event, whose every
        # wait asks asyncio for the loop, a getpid() system call on Python 3.11).
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Counters for metrics and benchmarks.
        self.committed = 0
        self.batches = 0
        self.duplicates = 0
        # For barrier(): messages accepted, and messages written or failed, so far.
        self._accepted = 0
        self._settled = 0
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._writer(), name="hubbub-journal")

    def submit(self, pending: PendingMessage, token: Any) -> bool:
        """Queue a message; False when the queue is full (the caller says so)."""
        if self._closing or len(self._queue) >= self.max_queue:
            return False
        self._queue.append((pending, token))
        self._accepted += 1
        self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def barrier(self) -> None:
        """Wait until every message submitted before this call is stored (or failed).

        Deleting a room waits here, so that no message accepted before the delete
        is written after it (which would create the room again).
        """
        target = self._accepted
        if self._settled >= target or self._task is None or self._task.done():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers.append((target, future))
        await future

    def _settle(self, count: int) -> None:
        self._settled += count
        waiting, self._barriers = self._barriers, []
        for target, future in waiting:
            if self._settled < target:
                self._barriers.append((target, future))
            elif not future.done():
                future.set_result(None)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def _writer(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            while not self._queue and not self._closing:
                waiter = self._waiter = loop.create_future()
                await waiter
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                began = time.perf_counter()
                try:
                    results = await self.store.append([pending for pending, _ in batch])
                except Exception as exc:
                    log.error("could not store %d messages: %s", len(batch), exc)
                    metrics.store_failures.inc(amount=len(batch))
                    self._safe(self.on_failure, batch, exc)
                    self._settle(len(batch))
                    continue
                committed = time.perf_counter()
                self._count(results, committed - began)
                self._safe(
                    self.on_commit,
                    [
                        (msg, dup, token)
                        for (msg, dup), (_, token) in zip(results, batch, strict=True)
                    ],
                )
                self._settle(len(batch))
                # Runs after this tick's end-of-tick write (scheduled by on_commit's
                # pushes, so before this): the commit-to-write time.
                loop.call_soon(_delivered, committed)
            if self._closing:
                self._settle(0)
                for _, future in self._barriers:
                    if not future.done():
                        future.set_result(None)
                self._barriers.clear()
                return

    def _count(self, results: list[tuple[Message, bool]], seconds: float) -> None:
        self.batches += 1
        self.committed += len(results)
        dups = sum(1 for _, duplicate in results if duplicate)
        self.duplicates += dups
        metrics.journal_commit.observe(seconds)
        metrics.journal_batch.observe(len(results))
        metrics.messages_stored.inc(amount=len(results) - dups)
        if dups:
            metrics.duplicates.inc(amount=dups)

    @staticmethod
    def _safe(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("journal callback failed")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None and self._queue:
            self.start()  # never started: still write what was accepted
        self._closing = True
        self._wake()
        if self._task is not None:
            await self._task
            self._task = None


def _delivered(committed: float) -> None:
    metrics.delivery_latency.observe(time.perf_counter() - committed)
