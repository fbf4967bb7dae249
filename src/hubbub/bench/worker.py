"""One generator process: many WebSocket clients on one uvloop event loop.

The parent (:mod:`hubbub.bench.scenarios`) starts one or more of these with
``multiprocessing`` and drives them through a pipe, one command at a time:
``connect`` (open clients and wait for each greeting), ``run`` (send for a
while, sample delivery counters), ``finish`` (wait until every receiver has
everything that was sent, then report the ordering check), ``churn``
(connect / greet / close in a loop), ``close`` and ``exit``; and the storm
scenarios' ``storm_*`` commands (:class:`hubbub.bench.storm_clients.StormCommands`).

This module is the command loop (:class:`Worker`). The clients it opens
are in :mod:`hubbub.bench.clients` (the seed's plain text and hubbub's
``hubbub.v1``) and :mod:`hubbub.bench.sioclients` (socket.io), picows
clients all; the connection-rate client (``churn``) is in
:mod:`hubbub.bench.handshake`.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from picows import ws_connect

from . import proc
from .checker import filler
from .clients import ChatClient, ChatSender, Client, Sender, Shared, monotonic_ns
from .closing import close_all
from .handshake import Churn
from .sioclients import SocketIOClient, SocketIOSender, socketio_url
from .storm_clients import StormCommands

#: Each protocol's error when some client is not ready in time after ``connect``.
_NOT_GREETED = {
    "seed": "not every client got the greeting 'Hello, welcome\\n'",
    "hubbub.v1": "not every client got the answer to its join (a 'room' frame)",
    "socket.io": "not every client got the ack of its join",
}


def make_client(
    protocol: str,
    shared: Shared,
    nsenders: int,
    sid: int | None,
    head: bytes,
    room: str,
    nick: str,
) -> tuple[Client, Sender | None]:
    """A client speaking ``protocol``; it sends too, as sender ``sid``, unless that is None."""
    sender: Sender | None = None
    if protocol == "hubbub.v1":
        if sid is not None:
            sender = ChatSender(sid, head, room)
        return ChatClient(shared, nsenders, sender, room, nick), sender
    if protocol == "socket.io":
        if sid is not None:
            sender = SocketIOSender(sid, head, room)
        return SocketIOClient(shared, nsenders, sender, room, nick), sender
    if sid is not None:
        sender = Sender(sid, head)
    return Client(shared, nsenders, sender), sender


class Worker(StormCommands):
    def __init__(self, conn: Connection, index: int, progress: Any) -> None:
        self.conn = conn
        self.index = index
        self.progress = progress
        self.shared = Shared()
        self.clients: list[Client] = []
        self.senders: list[Sender] = []
        self._storm_init()

    def report(self, value: int) -> None:
        self.progress[self.index] = value

    async def serve(self) -> None:
        while True:
            try:
                cmd, args = await self._recv()
            except (EOFError, OSError):
                return
            if cmd == "exit":
                self.conn.send({"ok": True})
                return
            try:
                result = await getattr(self, "cmd_" + cmd)(**args)
            except Exception as exc:  # reported to the parent, which raises
                logging.getLogger("hubbub.bench").debug("command %s failed", cmd, exc_info=True)
                result = {"error": f"{cmd}: {type(exc).__name__}: {exc}"}
            self.conn.send(result)

    async def _recv(self) -> tuple[str, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        if not self.conn.poll():
            ready = loop.create_future()
            fd = self.conn.fileno()
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(fd)
                # add_reader made the pipe non-blocking; big answers need blocking writes.
                os.set_blocking(fd, True)
        msg: tuple[str, dict[str, Any]] = self.conn.recv()
        return msg

    # -- fan-out / latency --------------------------------------------------

    async def cmd_connect(
        self,
        url: str,
        count: int,
        senders: dict[int, int],
        nsenders: int,
        size: int = 100,
        concurrency: int = 128,
        read_buffer: int = 16 * 1024,
        wait_s: float = 30.0,
        protocol: str = "seed",
        room: str = "bench",
        first: int = 0,
    ) -> dict[str, Any]:
        """Open ``count`` clients; client i sends as sender ``senders[i]``.

        ``protocol`` ``hubbub.v1``: each client asks for that subprotocol and
        joins ``room`` as nickname ``c<first + i>``; it counts as greeted
        once the server's ``room`` frame (the join's answer) arrives.
        ``socket.io``: each client connects to ``url``'s host and port at
        ``/socket.io/?EIO=4&transport=websocket`` (whatever path ``url`` has),
        connects the default namespace and joins ``room`` as ``c<first + i>``;
        it counts as greeted once the join is acknowledged.
        """
        if protocol not in _NOT_GREETED:
            raise ValueError(f"this worker speaks seed, hubbub.v1 or socket.io, not {protocol!r}")
        headers = {"Sec-WebSocket-Protocol": "hubbub.v1"} if protocol == "hubbub.v1" else None
        if protocol == "socket.io":
            url = socketio_url(url)
        head = filler(size) if senders else b""
        sh = self.shared
        sh.greeted_event = asyncio.Event()
        sh.greet_target = sh.greeted + count
        sem = asyncio.Semaphore(concurrency)
        failed = 0
        base = len(self.clients)
        t_start = time.monotonic()

        async def one(i: int) -> None:
            nonlocal failed
            sid = senders.get(i)
            client, sender = make_client(protocol, sh, nsenders, sid, head, room, f"c{first + i}")
            if sender is not None:
                self.senders.append(sender)
            async with sem:
                try:
                    await ws_connect(
                        lambda: client,
                        url,
                        websocket_handshake_timeout=wait_s,
                        read_buffer_init_size=read_buffer,
                        extra_headers=headers,
                    )
                except Exception as exc:
                    failed += 1
                    sh.error(f"connect failed: {type(exc).__name__}: {exc}")
                    if sender is not None:
                        self.senders.remove(sender)
                    return
            self.clients.append(client)
            self.report(len(self.clients) - base)

        await asyncio.gather(*(one(i) for i in range(count)))
        connected = len(self.clients) - base
        sh.greet_target -= failed
        if sh.greeted < sh.greet_target:
            try:
                await asyncio.wait_for(sh.greeted_event.wait(), wait_s)
            except TimeoutError:
                sh.error(_NOT_GREETED[protocol])
        return {
            "connected": connected,
            "failed": failed,
            "greeted": sum(1 for c in self.clients[base:] if c.greeted),
            "seconds": time.monotonic() - t_start,
            "errors": list(sh.errors),
        }

    async def cmd_run(
        self,
        t_start: int,
        warmup: float,
        duration: float,
        dt: float,
        window: int = 0,
        interval: float = 0.0,
        offsets: dict[int, float] | None = None,
        latency: bool = False,
        drain: float = 10.0,
    ) -> dict[str, Any]:
        """Send from ``t_start`` (monotonic ns) for warmup + duration seconds.

        ``window > 0``: each sender keeps ``window`` messages in flight (a new
        one on each ``server:`` echo). Otherwise each sender sends one
        message every ``interval`` seconds, starting ``offsets[sid]`` after
        ``t_start``. Delivery counters are sampled every ``dt`` seconds.
        """
        loop = asyncio.get_running_loop()
        sh = self.shared
        t0 = t_start + int(warmup * 1e9)
        t_end = t0 + int(duration * 1e9)
        if latency:
            sh.lat = array.array("q")
            sh.lat_from = t0
        step = int(dt * 1e9)
        times = sorted({*range(t_start, t_end, step), t0, t_end})
        samples: list[tuple[int, int]] = []
        finished = loop.create_future()
        clients = self.clients
        lag_max = 0

        def sample(k: int) -> None:
            total = 0
            for c in clients:
                total += c.count
            samples.append((monotonic_ns(), total))
            self.report(total)
            if k + 1 < len(times):
                _later(loop, times[k + 1], sample, k + 1)
            else:
                for s in self.senders:
                    s.running = False
                finished.set_result(None)

        def tick(sender: Sender, k: int) -> None:
            nonlocal lag_max
            if not sender.running:
                return
            due = t_start + int((offsets_[sender.sid] + k * interval) * 1e9)
            if due >= t_end:
                return
            lag_max = max(lag_max, monotonic_ns() - due)
            sender.send()
            _later(loop, due + int(interval * 1e9), tick, sender, k + 1)

        def start() -> None:
            for s in self.senders:
                s.running = True
                if window > 0:
                    s.windowed = True
                    for _ in range(window):
                        s.send()
            if window <= 0:
                for s in self.senders:
                    tick(s, 0)

        offsets_ = {int(k): v for k, v in (offsets or {}).items()}
        _later(loop, t_start, start)
        _later(loop, times[0], sample, 0)
        await finished
        await self._drain_echoes(drain)
        return {
            "sent": {s.sid: s.seq for s in self.senders},
            "samples": samples,
            "send_lag_max_ns": lag_max,
        }

    async def _drain_echoes(self, drain: float) -> None:
        """Let every sender's last messages come back (their echoes), for up to ``drain`` s."""
        deadline = time.monotonic() + drain
        while any(s.inflight > 0 and s.transport is not None for s in self.senders):
            if time.monotonic() > deadline:
                self.shared.error("some echoes ('server: ...') never came back")
                break
            await asyncio.sleep(0.01)

    async def cmd_finish(
        self, sent: list[int], wait_s: float = 10.0, quiet_s: float = 1.0
    ) -> dict[str, Any]:
        """Wait until every receiver has the last message of every sender; report.

        Gives up after ``wait_s``, or once nothing has arrived for ``quiet_s``
        (what is still missing then is lost, not late).
        """
        now = time.monotonic()
        deadline = now + wait_s
        sh = self.shared
        seen, seen_at = -1, now
        while True:
            pending = [c for c in self.clients if not c.dropped and not c.chk.complete(sent)]
            now = time.monotonic()
            if not pending or now > deadline:
                break
            total = sum(c.count for c in self.clients)
            if total != seen:
                seen, seen_at = total, now
            elif now - seen_at > quiet_s:
                break
            await asyncio.sleep(0.02)
        expected = sum(sent)
        lat = sh.lat
        sh.lat = None
        return {
            "receivers": len(self.clients),
            "deliveries": sum(c.count for c in self.clients),
            "expected": expected * len(self.clients),
            "lost": sum(c.chk.lost(sent) for c in self.clients),
            "duplicated": sum(c.chk.duplicated for c in self.clients),
            "reordered": sum(c.chk.reordered for c in self.clients),
            "malformed": sum(c.malformed for c in self.clients),
            "disconnected": sum(1 for c in self.clients if c.dropped),
            "echo_errors": sum(s.echo_bad for s in self.senders)
            + sum(s.seq - s.echoes for s in self.senders),
            "incomplete": len(pending),
            "latencies": lat.tobytes() if lat is not None else b"",
            "errors": list(sh.errors),
        }

    async def cmd_close(self, wait_s: float = 5.0) -> dict[str, Any]:
        """Close every client (Close frame, then wait for the server to end TCP)."""
        clients = self.clients
        self.clients = []
        self.senders = []
        await close_all(clients, wait_s)
        self.shared = Shared()
        self.report(0)
        return {"closed": len(clients)}

    # -- connection rate -----------------------------------------------------

    async def cmd_churn(
        self,
        url: str,
        t_start: int,
        warmup: float,
        duration: float,
        dt: float,
        concurrency: int = 64,
        cycle_s: float = 5.0,
    ) -> dict[str, Any]:
        """``concurrency`` loops of connect, upgrade, greeting, close until the end."""
        churn = Churn(url, t_start, warmup, duration, dt, self.shared, self.report, cycle_s)
        return await churn.run(concurrency)


def _later(
    loop: asyncio.AbstractEventLoop, when_ns: int, fn: Callable[..., Any], *args: Any
) -> None:
    """Call ``fn(*args)`` at ``when_ns`` (monotonic ns), or now if that has passed."""
    loop.call_later(max(0.0, (when_ns - monotonic_ns()) / 1e9), fn, *args)


def worker_main(
    conn: Connection,
    index: int,
    progress: Any,
    cpus: list[int] | None,
    nofile: int | None,
) -> None:
    """Entry point of a generator process (multiprocessing target)."""
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    proc.raise_nofile(nofile)
    logging.getLogger("picows").setLevel(logging.CRITICAL)
    try:
        uvloop.run(Worker(conn, index, progress).serve())
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
