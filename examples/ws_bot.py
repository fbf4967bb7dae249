"""A bot over the hubbub.v1 WebSocket protocol: it joins a room and answers commands.

Run: python examples/ws_bot.py [--url ws://127.0.0.1:9502/] [--room lobby] [--nick bot]
In the room: !help, !time, !roll NdM, !echo TEXT

It needs only the `websockets` client. It reconnects by itself with back-off,
resumes the room where it left off (`join` with `since` and `epoch`: commands
sent while it was away are replayed to it and answered), and gives each reply
an id derived from the command's message id, so a reply that is sent again
after a reconnect is stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Iterator

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HELP = "commands: !help, !time, !roll NdM (up to 20d1000), !echo TEXT"


def answer(text: str, sender: str) -> str | None:
    """The reply to a command, or None for anything else."""
    command, _, arg = text.strip().partition(" ")
    if command == "!help":
        return HELP
    if command == "!time":
        return time.strftime("server time: %Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if command == "!echo" and arg.strip():
        return arg.strip()
    if command == "!roll":
        n, _, m = arg.strip().partition("d")
        if n.isdigit() and m.isdigit() and 1 <= int(n) <= 20 and 1 <= int(m) <= 1000:
            dice = [random.randint(1, int(m)) for _ in range(int(n))]
            return f"{sender} rolled {arg.strip()}: {' + '.join(map(str, dice))} = {sum(dice)}"
        return "usage: !roll NdM, e.g. !roll 2d6 (up to 20d1000)"
    return None


def delays(max_delay: float) -> Iterator[float]:
    """Reconnect delays: exponential with jitter, from 0.1 s up to max_delay."""
    delay = 0.1
    while True:
        yield random.uniform(0.5, 1.0) * delay
        delay = min(max_delay, delay * 2)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run(url: str, room: str, nick: str, max_delay: float) -> None:
    since: int | None = None  # the last seq seen in the room: where to resume
    epoch: str | None = None
    # `async for` reconnects after a lost connection (with our delays).
    async for ws in connect(
        url, subprotocols=["hubbub.v1"], reconnect_delays=lambda: delays(max_delay)
    ):
        join: dict[str, object] = {"type": "join", "room": room, "nick": nick}
        if since is not None:
            join |= {"since": since, "epoch": epoch}
        try:
            await ws.send(json.dumps(join))
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "room":
                    log(f"joined #{room} as {nick} (seq {frame['seq']})")
                    if since is None:  # first join: answer only what comes from now on
                        since = frame["seq"]
                    epoch = frame["epoch"]
                elif kind == "reset":
                    # The missed messages are gone (retention, new epoch): go on from now.
                    since, epoch = frame["seq"], frame["epoch"]
                elif kind == "message":
                    since = frame["seq"]
                    if frame["nick"] == nick:
                        continue
                    reply = answer(frame["text"], frame["nick"])
                    if reply is not None:
                        send = {"type": "send", "room": room, "id": f"re-{frame['id']}"}
                        await ws.send(json.dumps({**send, "text": reply}))
                elif kind == "error":
                    log(f"error: {frame['code']}: {frame['message']}")
                    if frame.get("ref") == "join":  # e.g. nick taken: try again later
                        await asyncio.sleep(max_delay)
                        await ws.send(json.dumps(join))
        except ConnectionClosed:
            log("connection lost, reconnecting")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:9502/")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--nick", default="bot")
    parser.add_argument("--max-delay", type=float, default=30.0, help="longest reconnect delay")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.url, args.room, args.nick, args.max_delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
