"""The ``hubbub serve`` process that ``hubbub bench --transports`` measures.

A fresh server per transport and N (no sessions, rooms or caches left over from the
previous cell), on a free port of 127.0.0.1, with its own SQLite file, its log in a
file, pinned to ``cpus`` (and given a raised open-file limit), started in its own
session so that stopping it stops nothing else.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from . import proc

#: Open files the server may hold: 5,000 SSE receivers hold 5,000 streams plus a
#: few thousand short-lived request connections.
NOFILE = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubbubServer:
    """``async with HubbubServer(folder, cpus) as server:`` ``server.port``, ``server.pid``."""

    def __init__(self, folder: Path, cpus: set[int] | None, extra: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.cpus = cpus
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hubbub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--max-connections",
            str(NOFILE),
            "--db",
            str(self.folder / "hubbub.db"),
            # One sender at the bench's rate, never limited.
            "--rate",
            "0",
            *self.extra,
        ]

    def _preexec(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = NOFILE if hard == resource.RLIM_INFINITY else min(max(NOFILE, soft), hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        os.setsid()

    def _spawn(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=proc.dies_with_us(signal.SIGKILL, self._preexec),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def start(self, within: float = 30.0) -> None:
        for _attempt in range(3):  # another process may take the free port first
            self._spawn()
            if await self._listening(within):
                return
            self.stop()
        raise RuntimeError(f"hubbub serve did not start:\n{self.tail()}")

    async def _listening(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return True
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def __aenter__(self) -> HubbubServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Blocking wait for the exit, off the event loop (clients may still close).
        await asyncio.to_thread(self.stop)
