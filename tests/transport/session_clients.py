"""Test clients of the fallback transports (docs/transports.md), over real sockets.

:class:`SessionSocket` speaks frames over an SSE or a long-poll session with
the interface the chat tests use of a ``websockets`` connection
(``send(text)``, ``recv()``, ``close()``), so one test can run over every
transport. Frames arrive in order in a queue; the carrier (event stream or
poll loop) runs in a background task and resumes after the last frame it
saw, as a browser would (Last-Event-ID / ``after``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

CLOSED = object()


class SessionGone(Exception):
    """The session answered 404 (or ``event: gone``): open a new one and resume."""


class SessionSocket:
    """One session, read by a background task (SSE stream or long polls)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, info: dict[str, Any]) -> None:
        self.http = http
        self.base = base
        self.info = info
        self.sid: str = info["session"]
        self.kind: str = info["transport"]
        self.url = f"{base}/v1/sessions/{self.sid}"
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        #: Number of the last frame received.
        self.last = 0
        #: The close (code, reason) the server sent, or "gone" / 404.
        self.closed: dict[str, Any] | None = None
        self.gone = False
        self.subprotocol = info.get("protocol") or None
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        base: str,
        kind: str,
        protocol: str | None = "hubbub.v1",
        headers: dict[str, str] | None = None,
        read: bool = True,
        ssl: Any = None,
    ) -> SessionSocket:
        """POST /v1/sessions; raises :class:`SessionRefused` on a non-201 answer.

        ``ssl``: the client's TLS context for an https:// base."""
        connector = aiohttp.TCPConnector(ssl=ssl) if ssl is not None else None
        http = aiohttp.ClientSession(connector=connector)
        query = f"?transport={kind}" + ("" if protocol is None else f"&protocol={protocol}")
        try:
            async with http.post(f"{base}/v1/sessions{query}", headers=headers or {}) as r:
                body = await r.read()
                if r.status != 201:
                    raise SessionRefused(r.status, body)
                info = json.loads(body)
        except BaseException:
            await http.close()
            raise
        sock = cls(http, base, info)
        if read:
            sock.start()
        return sock

    def start(self) -> None:
        reader = self._stream if self.kind == "sse" else self._poll
        self._task = asyncio.ensure_future(reader())

    # -- the websockets-like interface ------------------------------------------

    async def send(self, text: str) -> None:
        await self.post([text])

    async def post(self, lines: list[str] | bytes) -> dict[str, Any]:
        body = lines if isinstance(lines, bytes) else "".join(t + "\n" for t in lines).encode()
        async with self.http.post(f"{self.url}/frames", data=body) as r:
            answer = await r.read()
            if r.status == 404:
                raise SessionGone(answer.decode())
            assert r.status == 202, (r.status, answer)
            return json.loads(answer)

    async def recv(self, within: float = 5.0) -> str:
        """The next frame's text (TimeoutError if none comes ``within`` seconds)."""
        frame = await asyncio.wait_for(self.frames.get(), within)
        if frame is CLOSED:
            self.frames.put_nowait(CLOSED)
            raise SessionGone(json.dumps(self.closed))
        return frame

    async def close(self) -> None:
        """DELETE the session (the app's close event), then stop reading."""
        with contextlib.suppress(aiohttp.ClientError):
            async with self.http.delete(self.url) as r:
                await r.read()
        await self.stop()

    async def stop(self) -> None:
        """Stop reading without a goodbye (the session times out on the server)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.http.close()

    # -- carriers ---------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            async with self.http.get(f"{self.url}/poll?after={self.last}") as r:
                body = await r.read()
                if r.status == 404:
                    self._end({"error": json.loads(body)}, gone=True)
                    return
                assert r.status == 200, (r.status, body)
            answer = json.loads(body)
            for i, frame in enumerate(answer["frames"]):
                self.last += 1
                assert self.last == answer["last"] - len(answer["frames"]) + 1 + i
                self.frames.put_nowait(frame if isinstance(frame, str) else json.dumps(frame))
            self.last = answer["last"]
            if "closed" in answer:
                self._end(answer["closed"])
                return

    async def _stream(self) -> None:
        while True:
            headers = {"Last-Event-ID": str(self.last)} if self.last else {}
            async with self.http.get(f"{self.url}/events", headers=headers) as r:
                if r.status == 404:
                    self._end({"error": json.loads(await r.read())}, gone=True)
                    return
                assert r.status == 200, r.status
                assert r.headers["Content-Type"].startswith("text/event-stream")
                async for event in read_events(r.content):
                    if self._event(event):
                        return
            self.reconnects += 1  # ended by the server (replaced): go on as EventSource does

    def _event(self, event: dict[str, Any]) -> bool:
        """Handle one event; True when the session ended."""
        kind = event.get("event", "message")
        if kind == "message":
            n = int(event["id"])
            assert n == self.last + 1, (n, self.last)
            self.last = n
            self.frames.put_nowait(event["data"])
            return False
        data = json.loads(event["data"])
        self._end(data, gone=kind == "gone")
        return True

    def _end(self, info: dict[str, Any], gone: bool = False) -> None:
        self.closed = info
        self.gone = gone
        self.frames.put_nowait(CLOSED)


class SessionRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"{status} {body!r}")
        self.status = status
        self.body = body


async def read_events(content: aiohttp.StreamReader):  # type: ignore[no-untyped-def]
    """Parse a text/event-stream (WHATWG HTML 9.2.6) into dicts of fields."""
    event: dict[str, Any] = {}
    data: list[str] = []
    while True:
        raw = await content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n").rstrip("\r")
        if not line:
            if data:  # an event without data is not dispatched (e.g. retry:)
                event["data"] = "\n".join(data)
                yield event
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            event[name] = value
