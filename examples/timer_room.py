"""A room with timers: Swoole's Timer::tick / after / clear on hubbub's Server.

Run: python examples/timer_room.py [--host H] [--port N] [--clock SECONDS] [--idle SECONDS]
Then: websocat ws://127.0.0.1:9502/

* every --clock seconds, every client receives "clock: HH:MM:SS" (one `tick` for the room);
* a client that stays silent for --idle seconds after joining is nudged once
  (one `after` per connection, cleared with `clear_timer` as soon as it speaks);
* "/countdown N" counts down N..1, one line per second (a `tick` that clears itself).
Anything else is relayed to everyone as "<fd>: text".
"""

from __future__ import annotations

import argparse
import time

from hubbub import Server

MAX_COUNTDOWN = 10

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--host", default="0.0.0.0")
parser.add_argument("--port", type=int, default=9502)
parser.add_argument("--clock", type=float, default=10.0, help="seconds between clock lines")
parser.add_argument("--idle", type=float, default=30.0, help="seconds before the nudge")
args = parser.parse_args()

server = Server(args.host, args.port)
idle_timers: dict[int, int] = {}  # fd -> id of its pending nudge (`after`)
countdowns: dict[int, int] = {}  # fd -> id of its running countdown (`tick`)


def announce_time(timer_id: int) -> None:
    # A tick callback gets its own timer id first (Swoole's signature).
    server.broadcast(f"clock: {time.strftime('%H:%M:%S')}")


# Timers made before start() are armed when the server starts listening.
server.tick(args.clock * 1000, announce_time)


def nudge(fd: int) -> None:
    # An `after` timer fires once; it is gone by now, so forget its id.
    idle_timers.pop(fd, None)
    server.push(fd, f"reminder: you have been quiet for {args.idle:g}s, say hi!")


def count_down(timer_id: int, fd: int, left: list[int]) -> None:
    server.push(fd, f"countdown: {left[0]}")
    left[0] -= 1
    if left[0] == 0:
        server.clear_timer(timer_id)  # a tick runs until it is cleared
        countdowns.pop(fd, None)


@server.on("open")
def on_open(server, request):
    server.push(request.fd, f"welcome, you are {request.fd}")
    idle_timers[request.fd] = server.after(args.idle * 1000, nudge, request.fd)


@server.on("message")
def on_message(server, frame):
    fd, text = frame.fd, frame.data
    if fd in idle_timers:  # it spoke: no nudge
        server.clear_timer(idle_timers.pop(fd))
    if not isinstance(text, str):
        server.push(fd, "error: text only")
    elif text.startswith("/countdown"):
        arg = text.removeprefix("/countdown").strip()
        if not arg.isdigit() or not 1 <= int(arg) <= MAX_COUNTDOWN:
            server.push(fd, f"error: /countdown N, N from 1 to {MAX_COUNTDOWN}")
        elif fd in countdowns:
            server.push(fd, "error: a countdown is already running")
        else:
            countdowns[fd] = server.tick(1000, count_down, fd, [int(arg)])
    else:
        server.broadcast(f"{fd}: {text}")


@server.on("close")
def on_close(server, fd):
    # Timers outlive connections unless cleared: clear this client's ones.
    for timers in (idle_timers, countdowns):
        if fd in timers:
            server.clear_timer(timers.pop(fd))


server.start()
