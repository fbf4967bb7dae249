"""A socket.io chat server on ``python-socketio`` and aiohttp (a benchmark peer).

    python bench/peers/python_socketio_peer.py PORT

The same server as ``bench/peers/socketio_node/server.js`` (``hubbub bench
--protocol socket.io``): two events, each acknowledged.

- ``join {room, nick}``: joins the room; ack ``{room, members}``.
- ``send {room, id, text}``: every member of the room, the sender included,
  gets ``message {room, seq, id, nick, text, ts, client_id}`` (``seq``
  counts the room's messages from 1, ``id`` is unique for the server's
  lifetime, ``client_id`` is the id the client sent); then ack ``{id, seq}``.

python-socketio's defaults otherwise (handlers run as tasks, one send task
per recipient: that is how the library broadcasts). Listens on 127.0.0.1
only; aiohttp would accept permessage-deflate, but the generator does not
offer it. Runs on uvloop.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from typing import Any

import socketio
import uvloop
from aiohttp import web

sio = socketio.AsyncServer(
    async_mode="aiohttp",
    logger=False,
    engineio_logger=False,
    http_compression=False,
    cors_allowed_origins=[],  # no CORS headers: the clients are not browsers
)
counters: dict[str, int] = {}
nicks: dict[str, str] = {}
ids = itertools.count(1)


@sio.on("join")
async def join(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    room = str(data["room"])
    nicks[sid] = str(data["nick"])
    await sio.enter_room(sid, room)
    return {"room": room, "members": len(sio.manager.rooms["/"][room])}


@sio.on("send")
async def send(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    room = data["room"]
    seq = counters[room] = counters.get(room, 0) + 1
    msg = {
        "room": room,
        "seq": seq,
        "id": str(next(ids)),
        "nick": nicks.get(sid, ""),
        "text": data["text"],
        "ts": time.time(),
        "client_id": data["id"],
    }
    await sio.emit("message", msg, room=room)
    return {"id": data["id"], "seq": seq}


@sio.on("disconnect")
async def disconnect(sid: str, *reason: Any) -> None:
    nicks.pop(sid, None)


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"python-socketio peer listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
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
