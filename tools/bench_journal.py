"""Messages persisted per second through the journal (group commit) into SQLite.

    python -m tools.bench_journal [--messages 50000] [--repeat 3]
    python -m tools.bench_journal --steady 80 [--messages 2000] [--repeat 3] [--no-inline]

Compares group commit (the journal) with one transaction per message, for
synchronous=NORMAL and FULL, on a file in a temporary directory. Prints a
Markdown table of medians: messages/s and the process's CPU time per message
(every thread; the figure that holds up on a machine shared with other work).

``--steady RATE`` measures instead what one message costs at a steady rate
(chat mode's per-message work in the store and the journal, whatever the
number of recipients): messages submitted one at a time, RATE per second,
each to the journal of an SQLite file (NORMAL); the process's CPU time (every
thread: the loop's and the store thread's) per message, and the time from
``submit`` to ``on_commit``. ``--no-inline`` makes every commit on the store
thread (as before commits on the loop's thread), for A/B comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import uvloop

from hubbub.apps.journal import Journal
from hubbub.store.base import PendingMessage
from hubbub.store.sqlite import SQLiteStore

TEXT = "x" * 100


async def grouped(path: str, n: int, synchronous: str) -> tuple[float, float]:
    store = SQLiteStore(path, synchronous)
    await store.open()
    done = asyncio.Event()
    count = 0

    def on_commit(results):
        nonlocal count
        count += len(results)
        if count >= n:
            done.set()

    journal = Journal(store, on_commit, lambda batch, exc: None, max_queue=n)
    journal.start()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(n):  # submitted as fast as connections could hand them in
        journal.submit(PendingMessage(f"room{i % 10}", f"c{i}", "bench", TEXT, time.time()), i)
        if i % 500 == 0:
            await asyncio.sleep(0)
    await done.wait()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await journal.close()
    await store.close()
    return n / elapsed, cpu / n * 1e6


async def one_by_one(path: str, n: int, synchronous: str) -> tuple[float, float]:
    store = SQLiteStore(path, synchronous)
    await store.open()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await store.append([PendingMessage(f"room{i % 10}", f"c{i}", "bench", TEXT, time.time())])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await store.close()
    return n / elapsed, cpu / n * 1e6


async def steady(path: str, n: int, rate: float, inline: bool) -> tuple[float, float]:
    """CPU µs per message (all threads) and the median submit-to-commit µs."""
    store = SQLiteStore(path, "NORMAL")
    await store.open()
    store.inline = inline
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    submitted: dict[int, float] = {}
    done = asyncio.Event()

    def on_commit(results):
        now = time.perf_counter()
        for _, _, token in results:
            waits.append(now - submitted.pop(token))
        if len(waits) >= n:
            done.set()

    journal = Journal(store, on_commit, lambda batch, exc: None)
    journal.start()
    # Warm up (room created, statements prepared), then the measured messages.
    journal.submit(PendingMessage("room", "warm", "bench", TEXT, time.time()), -1)
    submitted[-1] = time.perf_counter()
    await journal.barrier()
    waits.clear()
    cpu = time.process_time()
    start = loop.time()
    for i in range(n):
        # Sleeping between messages on purpose: the store thread goes idle, as at
        # a steady rate.
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        submitted[i] = time.perf_counter()
        journal.submit(PendingMessage("room", f"c{i}", "bench", TEXT, time.time()), i)
    await done.wait()
    cpu = time.process_time() - cpu
    await journal.close()
    await store.close()
    return cpu / n * 1e6, statistics.median(waits) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steady", type=float, default=None, metavar="RATE")
    parser.add_argument("--no-inline", action="store_true")
    args = parser.parse_args()
    if args.steady is not None:
        n = args.messages or 2_000
        results = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(await steady(f"{tmp}/bench.db", n, args.steady, not args.no_inline))
        cpu = statistics.median(r[0] for r in results)
        wait = statistics.median(r[1] for r in results)
        where = "store thread" if args.no_inline else "loop's thread when idle"
        print(
            f"steady {args.steady:g} msgs/s, {n:,} messages x {args.repeat}, commits on the "
            f"{where}: {cpu:.1f} µs CPU per message (median; runs "
            + ", ".join(f"{r[0]:.1f}" for r in results)
            + f"), submit to commit {wait:.0f} µs (median)"
        )
        return
    args.messages = args.messages or 50_000
    rows = []
    for synchronous in ("NORMAL", "FULL"):
        for name, fn, n in (
            ("group commit (journal)", grouped, args.messages),
            ("one transaction per message", one_by_one, max(500, args.messages // 20)),
        ):
            runs = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    runs.append(await fn(f"{tmp}/bench.db", n, synchronous))
            rate = statistics.median(r[0] for r in runs)
            rows.append((synchronous, name, rate, statistics.median(r[1] for r in runs), n))
    print(
        f"| synchronous | writes | messages/s (median of {args.repeat}) "
        "| CPU µs per message (every thread) | messages |"
    )
    print("|---|---|---|---|---|")
    for synchronous, name, rate, cpu, n in rows:
        print(f"| {synchronous} | {name} | {rate:,.0f} | {cpu:.1f} | {n:,} |")


if __name__ == "__main__":
    uvloop.run(main())
