"""What the fault tests share: clients that survive their node, nodes as processes,
and reading the history back for the checker (tests/cluster/checker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..conftest import serve_args
from .checker import ClientLog, Stored

ROOM = "drill"
#: Upper bound on each client's messages (the drill ends long before, normally).
MAX_SENDS = 2000


class DrillClient:
    """A chat client that survives its node: reconnect, resume, resend unacked."""

    def __init__(self, name: str, url: str, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.url = url
        self.tls = tls
        self.log = ClientLog(name)
        self.unacked: dict[str, str] = {}
        self.epoch: str | None = None
        self.seq = 0
        self.ws: Any = None
        self.connections = 0
        self.resets: list[dict[str, Any]] = []
        #: Client ids refused with `unavailable`, to send again.
        self.retry: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                await self._session()
            self.ws = None
            if not stop.is_set():
                await asyncio.sleep(0.05)

    async def _session(self) -> None:
        tls = self.tls if self.url.startswith("wss:") else None
        async with connect(
            self.url, ssl=tls, subprotocols=["hubbub.v1"], open_timeout=5, close_timeout=1
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            join: dict[str, Any] = {"type": "join", "room": ROOM, "since": self.seq}
            if self.epoch is not None:
                join["epoch"] = self.epoch
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
