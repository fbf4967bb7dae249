"""``hubbub chat``: an interactive terminal chat client.

Against a hubbub server it speaks ``hubbub.v1``: history on join, live
messages, presence lines, commands, and reconnects with backoff, resuming
each room from the last sequence number seen and resending unacked
messages with their ids (so nothing is lost or doubled). Against any other
WebSocket server (one that does not accept the subprotocol) it falls back
to plain text, like websocat: each line typed is a text message, each
message received is printed.

With a token (``--token`` / ``HUBBUB_TOKEN``) it sends ``Authorization: Bearer``
on each upgrade request. A refused token is not retried: on ``401`` at the
upgrade, close 4401 (no valid token) or 4403 (forbidden) it says why and exits
with status 1; on close 4402 (the token expired) it says "token expired" and
exits with status 1 too, since it cannot mint a new one: get a fresh token and
start it again (the server keeps the rooms' history; ``--room`` joins again).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .. import protocol as p

HELP = """commands:
  /join ROOM        join a room (and make it current)
  /leave [ROOM]     leave a room (default: current)
  /switch ROOM      make a joined room current
  /nick NAME        change your nickname
  /msg NICK TEXT    direct message to NICK in the current room
  /who              members of the current room
  /rooms            all rooms with member counts
  /history          load older messages of the current room
  /quit             leave
anything else is sent to the current room"""


#: Messages asked for when a room is joined, reset, or scrolled back with /history.
HISTORY_LIMIT = 20

#: Client ids of this client's own messages remembered (to tell them from others').
MAX_OWN_IDS = 10_000


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def describe_error(exc: BaseException) -> str:
    """Why a connection attempt failed or a connection ended, in a few words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}: not a WebSocket endpoint, or refused"
    if isinstance(exc, InvalidHandshake):
        return f"handshake failed: {exc}"
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        return _close_text(rcvd.code, rcvd.reason) if rcvd is not None else "connection lost"
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return str(exc) or type(exc).__name__


def _close_text(code: int | None, reason: str) -> str:
    if code is None:
        return "connection lost"
    return f"closed by the server: {code}" + (f" {reason}" if reason else "")


class AuthEnded(Exception):
    """The server ended the session for its token (4401-4403, or 4000: kicked): the line to show."""


@dataclass
class RoomView:
    name: str
    epoch: str | None = None
    last_seq: int = 0
    oldest_seen: int | None = None
    #: Sequence numbers already printed (history and live can overlap).
    shown: set[int] = field(default_factory=set)
    #: Between a resuming join and its `resumed` frame: the replay is arriving.
    resuming: bool = False
    #: Messages of others in that replay (your own are not "missed").
    replayed_others: int = 0


@dataclass
class ChatState:
    """Client-side protocol state; what survives a reconnect."""

    nick: str | None
    rooms: dict[str, RoomView] = field(default_factory=dict)
    current: str | None = None
    #: Messages sent but not acked yet: client id -> (room, text), resent on reconnect.
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)


class TerminalChat:
    def __init__(
        self,
        url: str,
        room: str | None,
        nick: str | None,
        show: Callable[[str], None],
        *,
        max_backoff: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        self.url = url
        #: Connection token sent as ``Authorization: Bearer`` (never printed).
        self.token = token
        #: For wss:// URLs: whom to trust (None: the system's CAs, or SSL_CERT_FILE).
        self.ssl_context = ssl_context
        self.show = show
        self.state = ChatState(nick=nick)
        if room:
            self.state.rooms[room] = RoomView(room)
            self.state.current = room
        self.max_backoff = max_backoff
        self.ws: ClientConnection | None = None
        self.plain = False
        self.quitting = False
        self.connected = asyncio.Event()
        self._quit = asyncio.Event()
        #: Client ids of messages this client sent (insertion-ordered, bounded).
        self.own_ids: dict[str, None] = {}
        #: Why the session ended for good (a refused or expired token): shown last.
        self.final: str | None = None
        #: Called when the prompt changes (the current room); the input line redraws.
        self.redraw: Callable[[], None] = lambda: None

    def prompt(self) -> str:
        """The input prompt: the current room, ``#lobby> ``."""
        current = self.state.current
        return f"#{current}> " if current and not self.plain else "> "

    def _set_current(self, room: str | None) -> None:
        self.state.current = room
        self.redraw()

    def backoff(self, attempt: int) -> float:
        """Seconds before reconnect ``attempt`` (0, 1, ...): doubling from 0.5 s up to
        ``max_backoff``, with jitter so that clients of a restarted server spread out."""
        base = min(self.max_backoff, 0.5 * 2 ** min(attempt, 16))
        return base / 2 + random.uniform(0, base / 2)

    # -- connection loop -----------------------------------------------------

    async def run(self) -> int:
        attempt = 0
        while not self.quitting:
            was_connected = False
            try:
                extra: dict[str, Any] = {}
                if self.ssl_context is not None and self.url.startswith("wss:"):
                    extra["ssl"] = self.ssl_context
                if self.token:
                    extra["additional_headers"] = {"Authorization": f"Bearer {self.token}"}
                async with connect(
                    self.url,
                    subprotocols=[p.SUBPROTOCOL],
                    open_timeout=10,
                    max_size=2**22,
                    **extra,
                ) as ws:
                    self.ws = ws
                    was_connected = True
                    self.plain = ws.subprotocol != p.SUBPROTOCOL
                    attempt = 0
                    if self.plain:
                        self.show(f"* connected to {self.url} (plain text mode)")
                        self.redraw()
                    self.connected.set()
                    await self._receive_checked(ws)
                reason = _close_text(ws.close_code, ws.close_reason or "")
            except (InvalidURI, ValueError) as exc:
                self.show(f"! {exc}")
                return 2
            except InvalidStatus as exc:
                if exc.response.status_code != 401 or self.quitting:
                    reason = describe_error(exc)
                else:
                    self.final = self._refused(exc)
                    return 1
            except AuthEnded as exc:
                self.final = str(exc)
                return 1
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                if self.quitting:
                    break
                reason = describe_error(exc)
            finally:
                self.connected.clear()
                self.ws = None
            if self.quitting:
                break
            delay = self.backoff(attempt)
            attempt += 1
            if was_connected:
                self.show(f"* disconnected ({reason}); reconnecting in {delay:.1f}s")
            else:
                self.show(f"! cannot connect to {self.url} ({reason}); retrying in {delay:.1f}s")
            # /quit ends the wait at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quit.wait(), delay)
        return 0

    def _refused(self, exc: InvalidStatus) -> str:
        """The line shown when the upgrade is refused with 401 (not retried)."""
        body = exc.response.body or b""
        why = body.decode("utf-8", "replace").strip().splitlines()
        text = why[0][:200] if why else "no reason given"
        hint = "" if self.token else "; give one with --token or $HUBBUB_TOKEN"
        return f"! {self.url} refused the connection (HTTP 401: {text}){hint}"

    def _auth_closed(self, code: int | None, reason: str) -> str | None:
        """The last line when the server closed for the token (4401-4403) or an
        administrator kicked the connection (4000), else None."""
        why = f" ({reason})" if reason else ""
        if code == p.CLOSE_TOKEN_EXPIRED:
            return "! token expired: get a new token and start hubbub chat again"
        if code == p.CLOSE_AUTH_FAILED:
            hint = "" if self.token else "; give one with --token or $HUBBUB_TOKEN"
            return f"! authentication failed{why}{hint}"
        if code == p.CLOSE_FORBIDDEN:
            return f"! forbidden{why}"
        if code == p.CLOSE_KICKED:
            return f"! disconnected by an administrator{why}"
        return None

    async def _receive_checked(self, ws: ClientConnection) -> None:
        """Receive until the connection ends; :class:`AuthEnded` when the server
        closed it for the token (not worth a reconnect with the same token)."""
        try:
            await self._receive(ws)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            final = self._auth_closed(rcvd.code, rcvd.reason) if rcvd is not None else None
            if final is not None and not self.quitting:
                raise AuthEnded(final) from None
            raise

    async def _receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            if self.plain:
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                self.show(text.rstrip("\n"))
                continue
            await self.on_text(raw)

    async def send(self, frame: p.ClientFrame) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(p.encode_client(frame).decode())

    # -- server frames -------------------------------------------------------

    async def on_text(self, raw: str | bytes) -> None:
        """One frame from the server: decoded with the protocol's schema, then handled
        by its type. Frame types this client does not know are ignored."""
        try:
            frame = p.decode_server(raw)
        except p.ProtocolError:
            self.show(f"! unreadable frame: {raw!r}"[:200])
            return
        if frame is not None:
            await self._on_frame(frame)

    async def _on_frame(self, frame: p.ServerFrame) -> None:
        handler = _FRAME_HANDLERS.get(type(frame))
        if handler is not None:  # typing, pong: nothing to print
            await handler(self, frame)

    async def _on_welcome(self, f: p.Welcome) -> None:
        s = self.state
        if s.nick is None:
            s.nick = f.nick
        self.show(f"* connected as {s.nick}")
        for view in list(s.rooms.values()):
            await self._join(view)
        for cid, (room, text) in list(s.pending.items()):
            await self.send(p.Send(room, cid, text))

    async def _on_room(self, f: p.RoomState) -> None:
        s = self.state
        view = s.rooms.setdefault(f.room, RoomView(f.room))
        resuming = view.epoch == f.epoch
        if not resuming:
            view.shown.clear()
            view.resuming = False  # a new epoch: no replay comes, history does
        view.epoch = f.epoch
        s.nick = f.nick
        if not resuming:
            view.last_seq = f.seq
            self.show(f"* joined #{f.room} as {f.nick} — members: " + ", ".join(f.members))
            await self.send(p.History(f.room, limit=HISTORY_LIMIT))

    async def _on_message(self, f: p.Message) -> None:
        s = self.state
        view = s.rooms.get(f.room)
        if view is not None:
            if f.seq <= view.last_seq and view.epoch == f.epoch:
                return  # already shown
            view.last_seq = f.seq
            if view.resuming and f.client_id not in self.own_ids:
                view.replayed_others += 1
        s.pending.pop(f.client_id or "", None)
        self._message(f)

    async def _on_history(self, f: p.HistoryPage) -> None:
        view = self.state.rooms.get(f.room)
        messages = f.messages
        if view is not None and messages:
            view.oldest_seen = messages[0].seq
        if not messages:
            self.show(f"* no {'older ' if view and view.oldest_seen else ''}history in #{f.room}")
        for m in messages:
            self._message(m)

    async def _on_ack(self, f: p.Ack) -> None:
        self.state.pending.pop(f.id, None)

    async def _on_resumed(self, f: p.Resumed) -> None:
        view = self.state.rooms.get(f.room)
        missed = f.count
        if view is not None:
            # The server counts every message replayed; yours (sent just
            # before the connection dropped, or resent on reconnect) were
            # not missed.
            missed = view.replayed_others if view.resuming else 0
            view.resuming = False
            view.replayed_others = 0
        if missed:
            self.show(f"* #{f.room}: {missed} missed message(s) above")

    async def _on_reset(self, f: p.Reset) -> None:
        view = self.state.rooms.get(f.room)
        if view is not None:
            view.epoch, view.last_seq = f.epoch, f.seq
            view.shown.clear()
            view.resuming = False
        self.show(f"* #{f.room}: history cannot be resumed ({f.reason}); reloading")
        await self.send(p.History(f.room, limit=HISTORY_LIMIT))

    async def _on_presence_batch(self, f: p.Presence) -> None:
        """A tick's coalesced changes (docs/protocol.md, *presence*): one line each
        kind; nothing for a large room (only its count changes, every second)."""
        if f.large:
            return
        if f.joined:
            self.show(f"* {', '.join(m.nick for m in f.joined)} joined #{f.room}")
        if f.left:
            self.show(f"* {', '.join(m.nick for m in f.left)} left #{f.room}")
        for r in f.renamed:
            self.show(f"* {r.old} is now {r.nick} in #{f.room}")

    async def _on_presence(self, f: p.Joined | p.Left | p.Renamed) -> None:
        if isinstance(f, p.Joined):
            self.show(f"* {f.nick} joined #{f.room}")
        elif isinstance(f, p.Left):
            self.show(f"* {f.nick} left #{f.room}")
        else:
            self.show(f"* {f.old} is now {f.nick} in #{f.room}")

    async def _on_nick(self, f: p.NickSet) -> None:
        self.state.nick = f.nick
        self.show(f"* you are now {f.nick}")

    async def _on_left_room(self, f: p.Left_) -> None:
        s = self.state
        s.rooms.pop(f.room, None)
        if s.current == f.room:
            self._set_current(next(iter(s.rooms), None))
        if f.reason == "deleted":
            self.show(f"* #{f.room} was deleted by an operator; you are no longer in it")
        else:
            self.show(f"* left #{f.room}")

    async def _on_dm(self, f: p.DirectMessage) -> None:
        self.show(f"[{_clock(f.ts)}] *{f.sender} → {f.to}* {f.text}")

    async def _on_members(self, f: p.Members) -> None:
        self.show(f"* #{f.room}: " + ", ".join(f.members))

    async def _on_rooms(self, f: p.RoomList) -> None:
        listed = ", ".join(f"#{r.name} ({r.members})" for r in f.rooms)
        self.show("* rooms: " + (listed or "none"))

    async def _on_error(self, f: p.Error) -> None:
        self.show(f"! {f.code}: {f.message}")

    def _message(self, f: p.Message) -> None:
        view = self.state.rooms.get(f.room)
        if view is not None:
            if f.seq in view.shown:
                return
            if len(view.shown) > 10_000:
                view.shown.clear()
            view.shown.add(f.seq)
        prefix = "" if f.room == self.state.current else f"#{f.room} "
        self.show(f"[{_clock(f.ts)}] {prefix}<{f.nick}> {f.text}")

    async def _join(self, view: RoomView) -> None:
        frame = p.Join(view.name, nick=self.state.nick or None)
        if view.epoch is not None:
            frame.since = view.last_seq
            frame.epoch = view.epoch
            view.resuming = True
            view.replayed_others = 0
        await self.send(frame)

    # -- user input ------------------------------------------------------------

    async def handle_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line:
            return
        if line in ("/quit", "/exit"):
            await self.quit()
            return
        if self.plain:
            if self.ws is None:
                self.show("! not connected")
            else:
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.send(line)
            return
        s = self.state
        if line.startswith("/") and not line.startswith("//"):
            cmd, _, arg = line[1:].partition(" ")
            arg = arg.strip()
            await self._command(cmd.lower(), arg)
            return
        if line.startswith("//"):
            line = line[1:]
        if s.current is None:
            self.show("! join a room first: /join ROOM")
            return
        cid = uuid.uuid4().hex
        s.pending[cid] = (s.current, line)
        self.own_ids[cid] = None
        if len(self.own_ids) > MAX_OWN_IDS:
            del self.own_ids[next(iter(self.own_ids))]
        if self.ws is None:
            self.show("* offline: message queued, sent on reconnect")
            return
        await self.send(p.Send(s.current, cid, line))

    async def _command(self, cmd: str, arg: str) -> None:
        s = self.state
        if cmd == "help":
            self.show(HELP)
        elif cmd == "join" and arg:
            room = arg.lstrip("#")
            self._set_current(room)
            if room not in s.rooms:
                s.rooms[room] = RoomView(room)
                await self._join(s.rooms[room])
        elif cmd == "switch" and arg:
            room = arg.lstrip("#")
            if room in s.rooms:
                self._set_current(room)
                self.show(f"* now in #{room}")
            else:
                self.show(f"! not in #{room}")
        elif cmd == "leave":
            room = arg.lstrip("#") or s.current
            if room:
                await self.send(p.Leave(room))
        elif cmd == "nick" and arg:
            await self.send(p.SetNick(arg))
        elif cmd == "msg" and " " in arg and s.current:
            to, _, text = arg.partition(" ")
            await self.send(p.Direct(s.current, to, text.strip(), id=uuid.uuid4().hex))
        elif cmd == "who" and s.current:
            await self.send(p.Who(s.current))
        elif cmd == "rooms":
            await self.send(p.ListRooms())
        elif cmd == "history" and s.current:
            view = s.rooms[s.current]
            await self.send(
                p.History(s.current, before=view.oldest_seen or None, limit=HISTORY_LIMIT)
            )
        else:
            self.show(f"! unknown or incomplete command /{cmd}; /help lists them")

    async def quit(self) -> None:
        self.quitting = True
        self._quit.set()
        if self.ws is not None:
            await self.ws.close()


async def _read_lines(chat: TerminalChat) -> None:
    """Input from a terminal (prompt_toolkit keeps the prompt below the output)
    or from a pipe (one message per line, like websocat)."""
    if sys.stdin.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession()
        chat.redraw = session.app.invalidate
        with patch_stdout(raw=True):
            while not chat.quitting:
                try:
                    # A callable: the prompt follows /join, /switch and /leave.
                    line = await session.prompt_async(chat.prompt)
                except (EOFError, KeyboardInterrupt):
                    await chat.quit()
                    return
                await chat.handle_line(line)
    else:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not chat.quitting:
            raw = await reader.readline()
            if not raw:
                # End of input: give the server a moment to answer, then leave.
                await chat.connected.wait()
                await asyncio.sleep(0.5)
                await chat.quit()
                return
            await chat.connected.wait()
            await chat.handle_line(raw.decode("utf-8", "replace"))


async def run_chat(
    url: str,
    room: str | None,
    nick: str | None,
    cafile: str | None = None,
    token: str | None = None,
) -> int:
    def show(text: str) -> None:
        print(text, flush=True)

    context = ssl.create_default_context(cafile=cafile) if cafile else None
    chat = TerminalChat(url, room, nick, show, ssl_context=context, token=token)
    runner = asyncio.create_task(chat.run())
    reader = asyncio.create_task(_read_lines(chat))
    done, _ = await asyncio.wait({runner, reader}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    status = await runner
    if chat.final is not None:
        # After the prompt is gone (prompt_toolkit would swallow a line printed as it closes).
        show(chat.final)
    return status


_FRAME_HANDLERS: dict[type, Callable[[TerminalChat, Any], Awaitable[None]]] = {
    p.Welcome: TerminalChat._on_welcome,
    p.RoomState: TerminalChat._on_room,
    p.Message: TerminalChat._on_message,
    p.HistoryPage: TerminalChat._on_history,
    p.Ack: TerminalChat._on_ack,
    p.Resumed: TerminalChat._on_resumed,
    p.Reset: TerminalChat._on_reset,
    p.Joined: TerminalChat._on_presence,
    p.Left: TerminalChat._on_presence,
    p.Renamed: TerminalChat._on_presence,
    p.Presence: TerminalChat._on_presence_batch,
    p.NickSet: TerminalChat._on_nick,
    p.Left_: TerminalChat._on_left_room,
    p.DirectMessage: TerminalChat._on_dm,
    p.Members: TerminalChat._on_members,
    p.RoomList: TerminalChat._on_rooms,
    p.Error: TerminalChat._on_error,
}
