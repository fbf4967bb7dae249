"""Task workers for one server (Swoole's ``task`` / ``onTask`` / ``onFinish``).

``fn(*args)`` runs in a worker process of a :class:`ProcessPoolExecutor`
(``forkserver`` start method), created on the first task; the event loop gets
an awaitable future, and the optional callback is called with the result in
the loop. ``fn`` and its arguments must be picklable (a module-level function).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .timers import CallUser

log = logging.getLogger("hubbub")


class TaskPool:
    """The worker processes of one server, started on the first task."""

    def __init__(self, call: CallUser) -> None:
        self._call = call
        self._pool: ProcessPoolExecutor | None = None

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        callback: Callable[[Any], Any] | None,
        workers: int,
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker (``workers`` processes at most); a future of its result."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=max(1, workers),
                mp_context=multiprocessing.get_context("forkserver"),
            )
        future = loop.run_in_executor(self._pool, fn, *args)
        if callback is not None:

            def done(f: asyncio.Future[Any]) -> None:
                if f.cancelled():
                    return
                exc = f.exception()
                if exc is not None:
                    log.error("task %s failed", getattr(fn, "__name__", fn), exc_info=exc)
                else:
                    self._call(callback, (f.result(),), "task callback")

            future.add_done_callback(done)
        return future

    async def shutdown(self, grace: float) -> None:
        """Cancel the tasks not started, wait up to ``grace`` s for the running ones
        and the workers to exit, without blocking the loop.

        Not ``shutdown(wait=False)``: that leaves the pool's manager thread
        closing its wake-up pipe while the interpreter exits, and CPython 3.11's
        exit hook may then write to the closed pipe (``Exception ignored ...
        OSError: [Errno 9] Bad file descriptor`` on stderr). Once ``shutdown(wait=True)``
        has returned, the manager thread is gone and the exit hook has nothing
        to wake. Past ``grace`` (a task still running), the wait goes on in its
        thread and the interpreter's exit waits for it, as it always did.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(
                asyncio.to_thread(pool.shutdown, True, cancel_futures=True), grace
            )
        except TimeoutError:
            log.warning("task workers still busy after %.1fs; exiting waits for them", grace)
