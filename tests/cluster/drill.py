"""What the fault tests share: clients that survive their node, nodes as processes,
a Redis of the test's own, and reading the history back (and waiting for presence
to converge) for the checker (tests/cluster/checker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..conftest import serve_args
from .checker import ClientLog, MemberView, Stored, check_presence

ROOM = "drill"
#: Upper bound on each client's messages (the drill ends long before, normally).
MAX_SENDS = 2000


class _Rejoin(Exception):
    """The server took this client out of the room (or refused its join): reconnect."""


class DrillClient:
    """A chat client that survives its node: reconnect, resume, resend unacked.

    It keeps the room's member list as the browser does (``view``, for
    :func:`check_presence`). ``nick``: the nickname it joins with (default: the
    server's ``user-<fd>...``). A join refused (``unavailable`` while Redis is
    away, ``nick_taken``) or a ``left_room`` from the server makes it reconnect
    and join again."""

    def __init__(
        self, name: str, url: str, tls: ssl.SSLContext | None = None, nick: str | None = None
    ) -> None:
        self.name = name
        self.url = url
        self.tls = tls
        self.nick = nick
        self.log = ClientLog(name)
        self.view = MemberView(ROOM)
        #: Codes of the ``error`` frames that refused a join (or took the client out).
        self.refused: list[str] = []
        #: Set by :meth:`quit`: this client stops reconnecting.
        self.gone = asyncio.Event()
        self.unacked: dict[str, str] = {}
        self.epoch: str | None = None
        self.seq = 0
        self.ws: Any = None
        self.connections = 0
        self.resets: list[dict[str, Any]] = []
        #: Client ids refused with `unavailable`, to send again.
        self.retry: list[str] = []

    @property
    def connected(self) -> bool:
        """Connected and in the room (its ``room`` frame came, no ``left_room`` since)."""
        return self.ws is not None and self.view.joined

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self.gone.is_set():
            pause = 0.05
            with contextlib.suppress(OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                try:
                    await self._session()
                except _Rejoin:
                    pause = 0.2
            self.ws = None
            self.view.lost()
            if not stop.is_set() and not self.gone.is_set():
                await asyncio.sleep(pause)

    async def _session(self) -> None:
        tls = self.tls if self.url.startswith("wss:") else None
        async with connect(
            self.url, ssl=tls, subprotocols=["hubbub.v1"], open_timeout=5, close_timeout=1
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            join: dict[str, Any] = {"type": "join", "room": ROOM, "since": self.seq}
            if self.epoch is not None:
                join["epoch"] = self.epoch
            if self.nick is not None:
                join["nick"] = self.nick
            await ws.send(json.dumps(join))
            for cid, text in list(self.unacked.items()):
                await ws.send(json.dumps({"type": "send", "room": ROOM, "id": cid, "text": text}))
            self.connections += 1
            self.ws = ws
            async for raw in ws:
                self._on_frame(json.loads(raw))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "room" and self.epoch is None:
            self.epoch = frame["epoch"]
        elif kind == "reset":
            self.resets.append(frame)
        elif kind == "message":
            self.epoch, self.seq = frame["epoch"], frame["seq"]
        elif kind == "ack":
            self.unacked.pop(frame["id"], None)
        elif kind == "error" and frame.get("code") == "unavailable" and frame.get("id"):
            # Not stored (the store is away): sent again on the next connection,
            # or now if this one lives on.
            self.retry.append(frame["id"])
        self.log.on_frame(frame)
        self.view.on_frame(frame)
        out = kind == "left_room" or (kind == "error" and frame.get("ref") == "join")
        if out and frame.get("room") == ROOM:
            self.refused.append(frame.get("code", kind))
            raise _Rejoin(frame.get("message", kind))

    async def ask_who(self) -> None:
        """Ask the node for the room's member list (the answer lands in ``view.who``)."""
        self.view.ask()
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"type": "who", "room": ROOM}))

    async def quit(self, sender: Any) -> None:
        """Stop sending (``sender``: this client's :meth:`send_until` task), wait
        until everything it sent is acknowledged, then leave for good (close)."""
        await self.stop_sending(sender)
        await self.close()

    async def stop_sending(self, sender: Any) -> None:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await self.drain_refused(30)
        await wait_for(lambda: not self.unacked, 30, f"{self.name}'s messages acked")

    async def close(self) -> None:
        """Leave for good: close the connection, connect no more."""
        self.gone.set()
        if self.ws is not None:
            await self.ws.close()

    async def send_until(self, stop: asyncio.Event, period: float) -> None:
        for i in range(MAX_SENDS):
            if stop.is_set():
                return
            cid, text = f"{self.name}-{i}", f"{self.name} says {i}"
            self.log.sent.append(cid)
            self.unacked[cid] = text
            if self.ws is not None:
                # Lost with the connection? Then it is sent again after the rejoin.
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.send(
                        json.dumps({"type": "send", "room": ROOM, "id": cid, "text": text})
                    )
            await self._resend_refused()
            await asyncio.sleep(period)

    async def _resend_refused(self) -> None:
        retry, self.retry = self.retry, []
        for cid in retry:
            text = self.unacked.get(cid)
            if text is not None and self.ws is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.send(
                        json.dumps({"type": "send", "room": ROOM, "id": cid, "text": text})
                    )

    async def drain_refused(self, within: float) -> None:
        """After the senders stop: keep sending refused messages until all are acked."""
        deadline = time.monotonic() + within
        while self.unacked and time.monotonic() < deadline:
            if not self.retry and self.ws is not None:
                self.retry = list(self.unacked)
            await self._resend_refused()
            await asyncio.sleep(0.2)


class Node:
    def __init__(self, spawn: Any, port: int, store: str, broker: str) -> None:
        self.spawn, self.port, self.store, self.broker = spawn, port, store, broker
        self.proc = self.start()

    def start(self) -> subprocess.Popen[str]:
        args = serve_args(
            self.port, "--store", self.store, "--broker", self.broker, "--rate", "0",
            "--no-access-log",
        )  # fmt: skip
        self.proc = self.spawn(*args, port=self.port)
        return self.proc

    def stop(self, how: signal.Signals) -> None:
        self.proc.send_signal(how)
        code = self.proc.wait(timeout=30)
        out = self.proc.stdout.read() if self.proc.stdout else ""
        expected = 0 if how == signal.SIGTERM else -signal.SIGKILL
        assert code == expected, f"node on {self.port} exited {code}:\n{out}"


class PrivateRedis:
    """A ``redis-server`` of the test's own (Debian's binary) on 127.0.0.1:``port``,
    without persistence (``--save '' --appendonly no``, its own ``--dir``): started
    again after :meth:`stop`, its dataset is empty. Only this test's nodes use it,
    so ``CLIENT KILL TYPE pubsub`` hits only them."""

    def __init__(self, workdir: Path, port: int) -> None:
        binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server", False)
        self.binary = binary
        self.dir, self.port = workdir, port
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]  # fmt: skip
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError), self.client() as r:
                if r.ping():
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self, how: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(how)
        self.proc.wait(timeout=15)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


async def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.1)


def read_history(port: int) -> list[Stored]:
    """The room's whole history, read back page by page from a node's HTTP API."""
    out: list[Stored] = []
    before = ""
    for _ in range(1000):
        url = f"http://127.0.0.1:{port}/api/rooms/{ROOM}/messages?limit=200{before}"
        with urllib.request.urlopen(url, timeout=10) as r:
            page = json.loads(r.read())
        msgs = page["messages"]
        out.extend(Stored(m["epoch"], m["seq"], m.get("client_id"), m["text"]) for m in msgs)
        if not page["has_more"] or not msgs:
            break
        before = f"&before={min(m['seq'] for m in msgs)}"
    return sorted(out, key=lambda m: m.seq)


def tcp_sockets(pid: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of a process's TCP sockets, from /proc (no
    psutil here); state "0A" is LISTEN. Empty when the process is gone."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    local = int(cols[1].rsplit(":", 1)[1], 16)
                    out.append((local, int(cols[2].rsplit(":", 1)[1], 16), cols[3]))
    return out


def local_tcp_ports(pid: int) -> set[int]:
    """The local ports of a process's TCP sockets."""
    return {local for local, _, _ in tcp_sockets(pid)}


def peer_ports(pid: int) -> set[int]:
    """The remote ports of a process's TCP sockets."""
    return {remote for _, remote, _ in tcp_sockets(pid)}


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a socket listening on ``port``."""
    return any(local == port and state == "0A" for local, _, state in tcp_sockets(pid))


async def settle(
    clients: list[DrillClient], senders: list[Any], stop_sending: asyncio.Event, port: int
) -> list[Stored]:
    """Stop sending, wait until every message is acknowledged and every client saw
    the last one; the stored history (read from the node on ``port``)."""
    stop_sending.set()
    await asyncio.gather(*senders)
    await asyncio.gather(*(c.drain_refused(60) for c in clients))
    await wait_for(lambda: not any(c.unacked for c in clients), 60, "every message acked")
    history = await asyncio.to_thread(read_history, port)
    last = history[-1].seq
    await wait_for(lambda: all(c.seq == last for c in clients), 60, "all saw the last")
    return history


async def shut(clients: list[DrillClient], tasks: list[Any], *events: asyncio.Event) -> None:
    """Stop the clients (set ``events``, close their sockets) and wait for ``tasks``."""
    for event in events:
        event.set()
    for c in clients:
        if c.ws is not None:
            await c.ws.close()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


def _presence_problems(clients: list[DrillClient]) -> list[str]:
    out = [f"{c.name}: not connected to the room" for c in clients if not c.connected]
    inside = [c for c in clients if c.connected]
    connected = {c.name: c.view.nick or "" for c in inside}
    return out + check_presence({c.name: c.view for c in inside}, connected)


async def presence_converges(clients: list[DrillClient], within: float, what: str) -> float:
    """Wait until every client of ``clients`` (those that should be in the room) is
    connected and each one's member list, count and ``who`` answer are exactly
    their nicknames (:func:`check_presence`): no ghost, none missing. Returns the
    seconds it took; fails after ``within`` seconds with the checker's problems."""
    start = time.monotonic()
    deadline = start + within
    for c in clients:
        c.view.ask()
    while True:
        problems = _presence_problems(clients)
        if not problems:
            # The incremental lists agree: the nodes' own lists (who) must too.
            await asyncio.gather(*(c.ask_who() for c in clients))
            bound = max(0.1, min(2.0, deadline - time.monotonic()))
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: all(c.view.who is not None for c in clients), bound, "")
            problems = _presence_problems(clients)
            problems += [f"{c.name}: no who answer" for c in clients if c.view.who is None]
            if not problems:
                return time.monotonic() - start
            for c in clients:
                c.view.ask()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"presence did not converge within {within}s ({what}):\n" + "\n".join(problems)
            )
        await asyncio.sleep(0.1)


def ready(node: Node) -> int:
    """The status of the node's /readyz (200: store and broker reachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
