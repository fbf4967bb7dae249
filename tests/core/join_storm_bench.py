"""A core-only micro benchmark of a join storm (not a test: run it by hand).

    .venv/bin/python -m tests.core.join_storm_bench [N] [PER_TICK]

N connections join one room, PER_TICK joins per loop tick (each joiner is live at
once, the worst case for presence). For the chat core as it was before
coalescing (``git show fdb7a22:src/hubbub/core/chat.py``, loaded as it is), the
core with ``coalesce_presence=False`` (one ``joined`` per join) and with
coalescing (``flush_presence`` once per tick), it prints the effects produced,
the frames delivered (each published frame counts once per live member: what
the service's ``push_many`` would write) and the seconds of core work plus
encoding each published frame once (what the service does); socket writes are
not included (they scale with the frames delivered).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hubbub import protocol as p
from hubbub.core import ChatCore, ChatLimits, Publish

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "fdb7a22"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _old_core_class() -> Any:
    """ChatCore as it was before identities and coalescing, if git has it."""
    try:
        src = subprocess.run(
            ["git", "show", f"{BEFORE}:src/hubbub/core/chat.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("hubbub.core._chat_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "hubbub.core"
    sys.modules[spec.name] = module
    exec(compile(src, "chat_before.py", "exec"), module.__dict__)
    return module.ChatCore


def storm(core: Any, clock: Clock, n: int, per_tick: int, flush: bool) -> tuple[int, int, float]:
    effects = delivered = 0
    live = 0
    started = time.perf_counter()
    for fd in range(n):
        core.connect(fd)
        out = core.handle(fd, p.Join("storm"))
        core.mark_live(fd, "storm")
        live += 1
        if flush and ((fd + 1) % per_tick == 0 or fd == n - 1):
            clock.now += 0.001 * per_tick
            out = [*out, *core.flush_presence()]
        for e in out:
            effects += 1
            if isinstance(e, Publish):
                p.encode(e.frame)
                # Live members when it is sent: all joined so far (each went live
                # at once), less the joiner itself for a per-join frame sent before.
                delivered += live if flush else live - 1
            else:
                delivered += 1
    return effects, delivered, time.perf_counter() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    per_tick = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    limits = ChatLimits(rate=0, room_create_rate=0)
    runs: list[tuple[str, Any, bool]] = []
    old = _old_core_class()
    if old is not None:
        runs.append((f"before ({BEFORE})", old(limits), False))
    runs.append(("per-join frames", ChatCore(limits), False))
    runs.append(("coalesced", ChatCore(limits, coalesce_presence=True), True))
    print(f"{n} joins to one room, {per_tick} per tick")
    print(f"{'core':<20} {'effects':>10} {'frames delivered':>18} {'seconds':>9}")
    for name, core, flush in runs:
        clock = Clock()
        core.clock = clock
        effects, delivered, seconds = storm(core, clock, n, per_tick, flush)
        print(f"{name:<20} {effects:>10,} {delivered:>18,} {seconds:>9.3f}")


if __name__ == "__main__":
    main()
