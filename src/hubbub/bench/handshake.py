"""The connection-rate client: connect, upgrade, read the greeting, close, in a loop.

A raw asyncio protocol (no WebSocket library): it writes a fixed upgrade
request, checks the 101 answer and ``Sec-WebSocket-Accept``, reads the
greeting frame, sends a masked Close frame and waits for the server's Close
and end of stream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .checker import GREETING
from .clients import Shared

monotonic_ns = time.monotonic_ns

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A masked Close frame, code 1000 (RFC 6455 5.5.1): FIN+close, MASK+len 2,
# a fixed masking key, then 0x03e8 xor the key.
_MASK = b"\x5a\xa5\x3c\xc3"
_CLOSE_FRAME = b"\x88\x82" + _MASK + bytes([0x03 ^ 0x5A, 0xE8 ^ 0xA5])


class Handshake(asyncio.Protocol):
    """Connect, upgrade, read the greeting, close: one connection-rate cycle."""

    def __init__(self, request: bytes, accept: bytes, done: asyncio.Future[str]) -> None:
        self.request = request
        self.accept = accept
        self.done = done
        self.buf = b""
        self.state = 0  # 0 response head, 1 greeting, 2 closing, 3 close received
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if self.state == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end]
            buf = buf[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self._finish("bad upgrade response: " + head[:80].decode("latin-1"))
                return
            self.state = 1
        while buf:
            if len(buf) < 2:
                break
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                break
            payload = buf[pos : pos + n]
            buf = buf[pos + n :]
            opcode = b0 & 0x0F
            if self.state == 1:
                if b0 != 0x81 or payload != GREETING:
                    self._finish(f"bad greeting: {payload[:60]!r}")
                    return
                self.state = 2
                assert self.transport is not None
                self.transport.write(_CLOSE_FRAME)
            elif opcode == 0x8 and self.state == 2:
                self.state = 3
                # The server closes TCP next (RFC 6455 7.1.1); don't wait forever.
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(1.0, self._finish, "ok-unclean")
        self.buf = buf

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == 3:
            self._finish("ok")
        elif self.state == 2:
            self._finish("ok-unclean")
        else:
            self._finish(f"connection closed before the greeting: {exc or 'EOF'}")

    def _finish(self, outcome: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done.done():
            self.done.set_result(outcome)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _upgrade_request(host: str, path: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), key)
    )
    return request, accept


class Churn:
    """``concurrency`` loops of connect, upgrade, greeting, close until ``t_end``.

    Counts completed cycles (``done``, of which ``unclean``: the server did
    not end TCP after its Close) and failed ones, and samples ``done`` every
    ``dt`` seconds from ``t_start`` (monotonic ns), passing it to ``report``.
    """

    def __init__(
        self,
        url: str,
        t_start: int,
        warmup: float,
        duration: float,
        dt: float,
        shared: Shared,
        report: Callable[[int], None],
        cycle_s: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.path = path
        self.host_header = parts.netloc
        # Over loopback, spread the connections over many source addresses: one
        # address has ~28k ephemeral ports, fewer than this scenario opens within
        # TIME_WAIT's 60 s, and a SYN that lands on a 4-tuple still in TIME_WAIT
        # on the server side is sometimes answered late (a 1 s SYN retransmit).
        self.sources: list[str | None] = (
            [f"127.0.0.{i}" for i in range(2, 64)] if self.host.startswith("127.") else [None]
        )
        self.source_index = 0
        self.t_start = t_start
        t0 = t_start + int(warmup * 1e9)
        self.t_end = t0 + int(duration * 1e9)
        step = int(dt * 1e9)
        self.times = sorted({*range(t_start, self.t_end, step), t0, self.t_end})
        self.samples: list[tuple[int, int]] = []
        self.shared = shared
        self.report = report
        self.cycle_s = cycle_s
        self.done = 0
        self.unclean = 0
        self.failed = 0

    async def run(self, concurrency: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        times = self.times
        await asyncio.sleep(max(0.0, (self.t_start - monotonic_ns()) / 1e9))
        loop.call_later(max(0.0, (times[0] - monotonic_ns()) / 1e9), self._sample, 0)
        await asyncio.gather(*(self._cycle() for _ in range(concurrency)))
        # The last sample fires at t_end; cycles may still finish just after.
        while True:
            if len(self.samples) >= len(times):
                break
            await asyncio.sleep(0.005)
        return {
            "samples": self.samples,
            "completed": self.done,
            "unclean": self.unclean,
            "failed": self.failed,
            "errors": list(self.shared.errors),
        }

    async def _cycle(self) -> None:
        loop = asyncio.get_running_loop()
        sh = self.shared
        sources = self.sources
        while monotonic_ns() < self.t_end:
            request, accept = _upgrade_request(self.host_header, self.path)
            fut: asyncio.Future[str] = loop.create_future()
            transport = None
            source = sources[self.source_index % len(sources)]
            self.source_index += 1
            try:
                async with asyncio.timeout(self.cycle_s):
                    transport, _ = await loop.create_connection(
                        lambda: Handshake(request, accept, fut),  # noqa: B023
                        self.host,
                        self.port,
                        local_addr=(source, 0) if source else None,
                    )
                    outcome = await fut
            except (TimeoutError, OSError) as exc:
                if transport is not None:
                    transport.abort()
                self.failed += 1
                sh.error(f"handshake cycle failed: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)
                continue
            if outcome == "ok":
                self.done += 1
            elif outcome == "ok-unclean":
                self.done += 1
                self.unclean += 1
            else:
                self.failed += 1
                sh.error(outcome)

    def _sample(self, k: int) -> None:
        self.samples.append((monotonic_ns(), self.done))
        self.report(self.done)
        times = self.times
        if k + 1 < len(times):
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, (times[k + 1] - monotonic_ns()) / 1e9), self._sample, k + 1)
