"""One-room chat server speaking the hubbub seed protocol, on ``aiohttp`` (a benchmark peer).

    python bench/peers/aiohttp_peer.py PORT

On connect: ``Hello, welcome\\n``. A text message T from connection fd goes
to every connected client (the sender too) as ``from <fd>: T``, encoded
once and sent to each with ``WebSocketResponse.send_frame``; the sender also
gets ``server: T``. Binary messages are relayed the same way as binary.
Runs on uvloop.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys

import uvloop
from aiohttp import WSMsgType, web

GREETING = "Hello, welcome\n"
clients: dict[int, web.WebSocketResponse] = {}
fds = itertools.count(1)


async def relay(opcode: WSMsgType, data: bytes, fd: int, ws: web.WebSocketResponse) -> None:
    out = b"from %d: " % fd + data
    for peer in list(clients.values()):
        try:
            await peer.send_frame(out, opcode)
        except ConnectionError:
            pass  # that peer is going away; its own handler removes it
    await ws.send_frame(b"server: " + data, opcode)


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    fd = next(fds)
    await ws.send_str(GREETING)
    clients[fd] = ws
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await relay(WSMsgType.TEXT, msg.data.encode(), fd, ws)
            elif msg.type is WSMsgType.BINARY:
                await relay(WSMsgType.BINARY, msg.data, fd, ws)
    finally:
        clients.pop(fd, None)
    return ws


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"aiohttp peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    try:
        await stop
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9502))
