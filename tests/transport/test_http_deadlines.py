"""The HTTP connections' handshake timeouts share one loop timer (``Deadlines``).

A fake loop (its clock set by the test, its timers listed) shows what the
timers of real connections do (tests/transport/test_http.py: 408 after
``handshake_timeout``, idle keep-alive connections closed): each connection
times out at its own deadline, in the order armed, unless cancelled; and
however many connections are armed, one timer is pending at a time.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from hubbub.transport.http import Deadlines


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        self.timers.append((when, callback))
        return object()

    def run_until(self, t: float) -> None:
        """Advance the clock to ``t``, firing due timers in order."""
        while True:
            due = sorted((w, i) for i, (w, _) in enumerate(self.timers) if w <= t)
            if not due:
                break
            when, i = due[0]
            _, callback = self.timers.pop(i)
            self.now = max(self.now, when)
            callback()
        self.now = t


class Conn:
    def __init__(self, name: str, log: list[tuple[str, float]], loop: FakeLoop) -> None:
        self.name, self.log, self.loop = name, log, loop

    def _timed_out(self) -> None:
        self.log.append((self.name, self.loop.now))


def test_each_connection_times_out_at_its_deadline_with_one_timer_pending():
    loop, log = FakeLoop(), []
    d = Deadlines(loop, 10.0)  # type: ignore[arg-type]
    entries = {}
    for i, name in enumerate("abcdef"):
        loop.now = 100.0 + i
        entries[name] = d.add(Conn(name, log, loop))  # type: ignore[arg-type]
    assert len(loop.timers) == 1  # six connections, one timer
    entries["b"][1] = None  # cancelled (its request head arrived)
    entries["e"][1] = None
    loop.run_until(112.5)
    assert log == [("a", 110.0), ("c", 112.0)]
    assert len(loop.timers) == 1
    loop.run_until(200.0)
    assert log == [("a", 110.0), ("c", 112.0), ("d", 113.0), ("f", 115.0)]
    assert loop.timers == [] and not d.queue and d.handle is None
    # Armed again after going idle: a new timer.
    loop.now = 300.0
    d.add(Conn("g", log, loop))  # type: ignore[arg-type]
    assert loop.timers[0][0] == 310.0


def test_a_timer_run_early_by_the_clock_resolution_still_times_out():
    loop, log = FakeLoop(), []
    d = Deadlines(loop, 1.0)  # type: ignore[arg-type]
    d.add(Conn("a", log, loop))  # type: ignore[arg-type]
    ((when, callback),) = loop.timers
    loop.timers.clear()
    loop.now = when - 0.0005
    callback()
    assert log == [("a", when - 0.0005)]


def test_cancelled_entries_do_not_pile_up():
    loop, log = FakeLoop(), []
    d = Deadlines(loop, 10.0)  # type: ignore[arg-type]
    for _ in range(1000):
        loop.now += 0.001
        d.add(Conn("x", log, loop))[1] = None  # type: ignore[arg-type]
    assert len(d.queue) == 1
    # A connection still armed at the front holds those behind it until its deadline.
    kept = d.add(Conn("kept", log, loop))  # type: ignore[arg-type]
    for _ in range(100):
        d.add(Conn("x", log, loop))[1] = None  # type: ignore[arg-type]
    assert len(d.queue) == 101 and d.queue[0] is kept
    loop.run_until(loop.now + 20)
    assert log == [("kept", kept[0])] and not d.queue


def test_a_timeout_that_arms_again_starts_no_second_timer():
    loop, log = FakeLoop(), []
    d = Deadlines(loop, 1.0)  # type: ignore[arg-type]

    class Again(Conn):
        def _timed_out(self) -> None:
            super()._timed_out()
            if len(self.log) < 3:
                d.add(self)  # type: ignore[arg-type]

    d.add(Again("a", log, loop))  # type: ignore[arg-type]
    d.add(Conn("b", log, loop))  # type: ignore[arg-type]
    loop.run_until(101.0)
    assert log == [("a", 101.0), ("b", 101.0)] and len(loop.timers) == 1
    loop.run_until(110.0)
    assert log == [("a", 101.0), ("b", 101.0), ("a", 102.0)] and loop.timers == []


def test_a_failing_timeout_does_not_stop_the_others(caplog):
    loop, log = FakeLoop(), []

    class Bad(Conn):
        def _timed_out(self) -> None:
            raise RuntimeError("boom")

    d = Deadlines(loop, 1.0)  # type: ignore[arg-type]
    d.add(Bad("bad", log, loop))  # type: ignore[arg-type]
    d.add(Conn("good", log, loop))  # type: ignore[arg-type]
    loop.run_until(105.0)
    assert log == [("good", 101.0)]
    assert "timeout failed" in caplog.text


async def test_one_queue_per_loop_and_delay():
    loop = asyncio.get_running_loop()
    a = Deadlines.of(loop, 0.3)
    assert Deadlines.of(loop, 0.3) is a
    assert Deadlines.of(loop, 0.5) is not a


def test_a_closed_loop_is_forgotten():
    loop = asyncio.new_event_loop()
    Deadlines.of(loop, 1.0)
    assert loop in Deadlines._of_loop
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("n", [1, 50])
async def test_silent_connections_time_out_on_a_real_loop(n):
    loop = asyncio.get_running_loop()
    done: list[int] = []
    fired = asyncio.Event()

    class Real:
        def __init__(self, i: int) -> None:
            self.i = i

        def _timed_out(self) -> None:
            done.append(self.i)
            if len(done) == n:
                fired.set()

    d = Deadlines.of(loop, 0.05)
    for i in range(n):
        d.add(Real(i))  # type: ignore[arg-type]
    await asyncio.wait_for(fired.wait(), 5.0)
    assert done == list(range(n))
