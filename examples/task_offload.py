"""Offload CPU work to task workers with server.task(): the event loop never blocks.

Run: python examples/task_offload.py [--host H] [--port N] [--workers N]
Then: websocat ws://127.0.0.1:9502/

  factor N    prime factors of N (1 < N <= 10**15), by trial division in a worker;
              the handler awaits the task (the awaitable form)
  hash TEXT   a deliberately slow key derivation of TEXT (PBKDF2-SHA256) in a worker;
              the result comes to a callback (the callback form, Swoole's onFinish)
  ping        "pong", answered at once, also while the workers are busy

Task functions run in other processes: they must be module-level functions of a
module the workers can import, and the server must start only under
``if __name__ == "__main__"`` (the workers import this file too).
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter

from hubbub import Server

MAX_N = 10**15  # trial division up to sqrt(MAX_N): a few seconds of one worker at most
MAX_HASHES = 4  # hash tasks one connection may have running at once
ROUNDS = 500_000
SALT = b"hubbub-example"


# -- the work (runs in a task worker process) ---------------------------------


def factorize(n: int) -> list[int]:
    """Prime factors of n, smallest first, by trial division."""
    factors = []
    d = 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1 if d == 2 else 2
    if n > 1:
        factors.append(n)
    return factors


def slow_hash(text: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", text.encode(), SALT, ROUNDS).hex()


def show_factors(n: int, factors: list[int]) -> str:
    """``360, [2, 2, 2, 3, 3, 5]`` -> ``"factor 360 = 2^3 * 3^2 * 5"``."""
    powers = [f"{p}^{k}" if k > 1 else str(p) for p, k in Counter(factors).items()]
    return f"factor {n} = {' * '.join(powers)}"


# -- the server (runs in the event loop) ----------------------------------------

hashing: dict[int, int] = {}  # fd -> hash tasks running for it


async def on_message(server: Server, frame) -> None:
    fd = frame.fd
    text = frame.data if isinstance(frame.data, str) else ""
    command, _, arg = text.partition(" ")
    if command == "ping":
        server.push(fd, "pong")
    elif command == "factor":
        if not arg.isdigit() or not 1 < int(arg) <= MAX_N:
            server.push(fd, f"error: factor N, with 1 < N <= {MAX_N}")
            return
        n = int(arg)
        server.push(fd, f"working: factor {n}")
        # The awaitable form. While this coroutine waits, the loop serves
        # everyone else; this connection's next messages wait their turn (the
        # events of one connection reach the handlers in order).
        factors = await server.task(factorize, n)
        server.push(fd, show_factors(n, factors))
    elif command == "hash" and arg:
        if hashing.get(fd, 0) >= MAX_HASHES:
            server.push(fd, f"error: busy, {MAX_HASHES} hashes running")
            return
        hashing[fd] = hashing.get(fd, 0) + 1

        def finished(digest: str) -> None:
            # Called in the event loop when the worker is done. The handler
            # returned long ago, so this client could go on meanwhile.
            if fd in hashing:
                hashing[fd] -= 1
            server.push(fd, f"hash {arg}: {digest}")

        server.task(slow_hash, arg, callback=finished)  # the callback form
    else:
        server.push(fd, "error: commands are: ping, factor N, hash TEXT")


def on_close(server: Server, fd: int) -> None:
    hashing.pop(fd, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9502)
    parser.add_argument("--workers", type=int, default=2, help="task worker processes")
    args = parser.parse_args()
    # Commands are short: refuse anything bigger than 4 KiB (closed with 1009).
    server = Server(args.host, args.port, task_workers=args.workers, max_message_size=4096)
    server.on("message", on_message)
    server.on("close", on_close)
    server.start()


if __name__ == "__main__":
    main()
