"""The chat app (``hubbub serve``) in a thread of the test process, for properties
that drive it over real sockets; and a log handler that catches tracebacks."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvloop

from hubbub import Server
from hubbub.apps.chat import create_app
from hubbub.config import Settings

from .strategies import API_KEY


class Tracebacks(logging.Handler):
    """Records every record of the server's loggers (``hubbub``, ``hubbub.*``) that
    carries an exception or is ERROR or worse. The test's own client library logs
    its own errors (websockets' sync client can log an EOFError from its receive
    thread when the server closes first); those say nothing about the server."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "hubbub" and not record.name.startswith("hubbub."):
            return
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage():
            with self.guard:
                self.records.append(record)

    def take(self) -> list[str]:
        """The bad records since the last call, formatted (with their tracebacks)."""
        with self.guard:
            records, self.records = self.records, []
        fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
        return [fmt.format(r) for r in records]


class LiveChat:
    """``create_app`` on 127.0.0.1, a free port, its own uvloop in a daemon thread."""

    def __init__(self, db: Path, **overrides: Any) -> None:
        self.settings = Settings(db=str(db), **overrides)
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.tracebacks = Tracebacks()
        self.thread = threading.Thread(target=self._run, name="fuzz-server", daemon=True)

    def _run(self) -> None:
        loop = self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self.server = create_app("127.0.0.1", 0, self.settings)
            self.port = loop.run_until_complete(self.server.listen())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        loop.run_forever()
        loop.run_until_complete(self.server.shutdown())
        loop.close()

    def start(self) -> LiveChat:
        self.thread.start()
        if not self.ready.wait(30):
            raise TimeoutError("the fuzz server did not start in 30 s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)

    def healthy(self, timeout: float = 10.0) -> bool:
        """A normal client gets ``200`` from /healthz on a fresh connection."""
        deadline = time.monotonic() + timeout
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.startswith(b"HTTP/1.1 200 ")


FUZZ_SETTINGS: dict[str, Any] = {
    "access_log": False,
    "api_key": API_KEY,
    # Many connections from one address, one after the other: the per-address
    # limits are exercised by their own tests, not here.
    "max_connections_per_ip": 0,
    "max_pending_handshakes_per_ip": 0,
    "handshake_timeout": 3.0,
    "close_timeout": 2.0,
    "max_message_size": 16384,
    "room_create_rate": 0.0,
}
