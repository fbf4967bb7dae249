"""Swoole\\Timer for one server: ``tick``, ``after`` and ``clear`` on its event loop.

Timers may be added before the server listens; they start when it does
(:meth:`Timers.schedule_pending`). A timer's function is user code: it is
called through the server's ``call`` (an exception is logged, a coroutine it
returns is run as a task), so a failing timer never stops the others.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

#: ``call(fn, args, what)``: call user code, logging (never raising) its errors.
CallUser = Callable[[Callable[..., Any], tuple[Any, ...], str], Any]


class _Timer:
    __slots__ = ("args", "fn", "handle", "id", "interval", "repeat")

    def __init__(
        self,
        timer_id: int,
        interval: float,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        repeat: bool,
    ):
        self.id = timer_id
        self.interval = interval
        self.fn = fn
        self.args = args
        self.repeat = repeat
        self.handle: asyncio.TimerHandle | None = None


class Timers:
    """The timers of one server, by id (ids start at 1 and are never reused)."""

    def __init__(self, call: CallUser) -> None:
        self._call = call
        self._timers: dict[int, _Timer] = {}
        self._ids = itertools.count(1)
        #: The loop timers run on; None until the server listens.
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, ms: float, fn: Callable[..., Any], args: tuple[Any, ...], repeat: bool) -> int:
        """A new timer of ``ms`` milliseconds, scheduled at once if the loop is known."""
        if ms <= 0:
            raise ValueError("timer interval must be positive")
        timer = _Timer(next(self._ids), ms / 1000.0, fn, args, repeat)
        self._timers[timer.id] = timer
        if self.loop is not None:
            self._schedule(timer)
        return timer.id

    def clear(self, timer_id: int) -> bool:
        """Cancel a timer; False if there is no such timer (any more)."""
        timer = self._timers.pop(timer_id, None)
        if timer is None:
            return False
        if timer.handle is not None:
            timer.handle.cancel()
        return True

    def clear_all(self) -> None:
        for timer_id in list(self._timers):
            self.clear(timer_id)

    def schedule_pending(self) -> None:
        """Start the timers added before the loop was known."""
        for timer in self._timers.values():
            if timer.handle is None:
                self._schedule(timer)

    def _schedule(self, timer: _Timer) -> None:
        assert self.loop is not None
        timer.handle = self.loop.call_later(timer.interval, self._fire, timer)

    def _fire(self, timer: _Timer) -> None:
        if timer.id not in self._timers:
            return
        if timer.repeat:
            self._schedule(timer)
            args: tuple[Any, ...] = (timer.id, *timer.args)
        else:
            del self._timers[timer.id]
            args = timer.args
        self._call(timer.fn, args, f"timer {timer.id}")
