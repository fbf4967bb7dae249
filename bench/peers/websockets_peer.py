"""One-room chat server speaking the hubbub seed protocol, on ``websockets`` (a benchmark peer).

    python bench/peers/websockets_peer.py PORT

On connect: ``Hello, welcome\\n``. A text message T from connection fd goes
to every connected client (the sender too) as ``from <fd>: T``, through
``websockets.asyncio.server.broadcast`` (encoded once, written synchronously
to each connection); the sender also gets ``server: T``. Binary messages are
relayed the same way as binary. Runs on uvloop.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

GREETING = "Hello, welcome\n"
clients: set[ServerConnection] = set()
fds = itertools.count(1)


async def handler(ws: ServerConnection) -> None:
    fd = next(fds)
    await ws.send(GREETING)
    clients.add(ws)
    try:
        async for message in ws:
            if isinstance(message, str):
                broadcast(clients, f"from {fd}: {message}")
                await ws.send(f"server: {message}")
            else:
                broadcast(clients, b"from %d: " % fd + message)
                await ws.send(b"server: " + message)
    finally:
        clients.discard(ws)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    # No compression: the benchmark's clients do not offer it anyway.
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        print(f"websockets peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9502))
