"""Messages persisted per second through the journal (group commit) into SQLite.

    python -m tools.bench_journal [--messages 50000] [--repeat 3]

Compares group commit (the journal) with one transaction per message, for
synchronous=NORMAL and FULL, on a file in a temporary directory. Prints a
Markdown table of medians.
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


async def grouped(path: str, n: int, synchronous: str) -> float:
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
    started = time.perf_counter()
    for i in range(n):  # submitted as fast as connections could hand them in
        journal.submit(PendingMessage(f"room{i % 10}", f"c{i}", "bench", TEXT, time.time()), i)
        if i % 500 == 0:
            await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - started
    await journal.close()
    await store.close()
    return n / elapsed


async def one_by_one(path: str, n: int, synchronous: str) -> float:
    store = SQLiteStore(path, synchronous)
    await store.open()
    started = time.perf_counter()
    for i in range(n):
        await store.append([PendingMessage(f"room{i % 10}", f"c{i}", "bench", TEXT, time.time())])
    elapsed = time.perf_counter() - started
    await store.close()
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for synchronous in ("NORMAL", "FULL"):
        for name, fn, n in (
            ("group commit (journal)", grouped, args.messages),
            ("one transaction per message", one_by_one, max(500, args.messages // 20)),
        ):
            rates = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    rates.append(await fn(f"{tmp}/bench.db", n, synchronous))
            rows.append((synchronous, name, statistics.median(rates), n))
    print(f"| synchronous | writes | messages/s (median of {args.repeat}) | messages |")
    print("|---|---|---|---|")
    for synchronous, name, rate, n in rows:
        print(f"| {synchronous} | {name} | {rate:,.0f} | {n:,} |")


if __name__ == "__main__":
    uvloop.run(main())
