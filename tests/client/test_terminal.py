"""`hubbub chat` driven in a pseudo-terminal against real servers."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import sys
from typing import Any

import pexpect
import pytest
from websockets.sync.client import connect

from hubbub import protocol as p
from hubbub.client.terminal import RoomView, TerminalChat, describe_error

from ..conftest import ROOT, free_port, serve_args


def chat(url: str, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "hubbub", "chat", url, *args],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=10,
        dimensions=(40, 160),
    )
    child.logfile_read = io.StringIO()  # the whole screen output, for counting lines
    return child


class V1:
    """A second participant speaking hubbub.v1 (sync client)."""

    def __init__(self, url: str, nick: str, room: str = "lobby") -> None:
        self.ws = connect(url, subprotocols=["hubbub.v1"]).__enter__()
        assert self.recv()["type"] == "welcome"
        self.send(type="join", room=room, nick=nick)
        assert self.until("room")["nick"] == nick

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def recv(self) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=10))

    def until(self, kind: str) -> dict[str, Any]:
        while True:
            frame = self.recv()
            if frame["type"] == kind:
                return frame


@pytest.fixture
def server(spawn, tmp_path):
    port = free_port()
    args = serve_args(port, "--db", str(tmp_path / "t.db"))
    proc = spawn(*args, port=port)
    return {"url": f"ws://127.0.0.1:{port}", "proc": proc, "args": args, "port": port}


def test_chat_session_with_presence_commands_and_dm(server):
    term = chat(server["url"], "--room", "lobby", "--nick", "ann")
    try:
        term.expect_exact("joined #lobby as ann")
        bob = V1(server["url"], "bob")
        term.expect_exact("* bob joined #lobby")
        term.sendline("hello from the terminal")
        term.expect(r"<ann> hello from the terminal")
        got = bob.until("message")
        assert got["nick"] == "ann" and got["text"] == "hello from the terminal"
        bob.send(type="send", room="lobby", id="b1", text="hi ann")
        term.expect_exact("<bob> hi ann")
        term.sendline("/who")
        term.expect_exact("* #lobby: ann, bob")
        term.sendline("/msg bob psst")
        dm = bob.until("dm")
        assert dm["from"] == "ann" and dm["text"] == "psst"
        term.expect_exact("*ann → bob* psst")
        term.sendline("/nick annie")
        term.expect_exact("* you are now annie")
        assert bob.until("renamed")["nick"] == "annie"
        term.sendline("/join dev")
        term.expect_exact("joined #dev as annie")
        term.sendline("/rooms")
        term.expect(r"\* rooms: #dev \(1\), #lobby \(2\)")
        term.sendline("/bogus")
        term.expect_exact("unknown or incomplete command /bogus")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
        term.close()
        assert term.exitstatus == 0
        assert bob.until("left")["nick"] == "annie"
    finally:
        term.close(force=True)


def test_history_on_join(server):
    bob = V1(server["url"], "bob")
    for i in range(3):
        bob.send(type="send", room="lobby", id=f"h{i}", text=f"earlier {i}")
        bob.until("ack")
    term = chat(server["url"], "--room", "lobby", "--nick", "ann")
    try:
        term.expect_exact("joined #lobby as ann")
        for i in range(3):
            term.expect_exact(f"<bob> earlier {i}")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)


def test_reconnects_resumes_and_sends_what_was_typed_offline(server, spawn):
    term = chat(server["url"], "--room", "lobby", "--nick", "ann")
    try:
        term.expect_exact("joined #lobby as ann")
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(10)
        term.expect_exact("reconnecting in")
        term.sendline("typed while offline")
        term.expect_exact("message queued")
        spawn(*server["args"], port=server["port"])
        term.expect_exact("* connected as ann", timeout=20)
        term.expect_exact("<ann> typed while offline")
        bob = V1(server["url"], "bob")
        bob.send(type="send", room="lobby", id="x1", text="after restart")
        term.expect_exact("<bob> after restart")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
        screen = term.logfile_read.getvalue()
        assert screen.count("<ann> typed while offline") == 1
        assert screen.count("<bob> after restart") == 1
        assert "missed message" not in screen  # your own message was not missed
        bob.send(type="history", room="lobby")
        texts = [m["text"] for m in bob.until("history")["messages"]]
        assert texts == ["typed while offline", "after restart"]
        bob.ws.close()
    finally:
        term.close(force=True)


def test_plain_mode_against_a_plain_websocket_server(spawn):
    port = free_port()
    spawn(str(ROOT / "examples" / "seed_chat.py"), str(port), port=port)
    term = chat(f"ws://127.0.0.1:{port}")
    try:
        term.expect_exact("plain text mode")
        term.expect_exact("Hello, welcome")
        term.sendline("hi")
        term.expect_exact("from 1: hi")
        term.expect_exact("server: hi")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)


def test_connection_refused_is_named_with_the_address_and_backs_off():
    port = free_port()  # nothing listens there
    url = f"ws://127.0.0.1:{port}"
    term = chat(url, "--room", "lobby")
    try:
        pattern = re.escape(f"! cannot connect to {url} (connection refused); retrying in ")
        delays = []
        for _ in range(3):
            term.expect(pattern + r"(\d+\.\d)s")
            delays.append(float(term.match.group(1)))
        # Doubling from 0.5 s with jitter: 0.25-0.5, 0.5-1, 1-2.
        assert 0.2 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0 and 1.0 <= delays[2] <= 2.0
        term.sendline("/quit")
        term.expect(pexpect.EOF, timeout=5)  # not after the back-off: at once
        term.close()
        assert term.exitstatus == 0
        assert "disconnected" not in term.logfile_read.getvalue()
    finally:
        term.close(force=True)


def test_backoff_is_capped():
    t = TerminalChat("ws://127.0.0.1:9", None, None, lambda _: None, max_backoff=10.0)
    delays = [t.backoff(n) for n in range(200)]
    assert all(0 < d <= 10.0 for d in delays)
    assert min(delays[10:]) >= 5.0  # at the cap: half of it, plus jitter


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host"),
        (TimeoutError(), "timed out"),
        (OSError(113, "No route to host"), "no route to host"),
    ],
)
def test_connection_errors_are_named(exc, text):
    assert text in describe_error(exc)


def test_prompt_shows_the_current_room(server):
    term = chat(server["url"], "--room", "lobby", "--nick", "ann")
    try:
        term.expect_exact("joined #lobby as ann")
        # (prompt_toolkit draws the prompt's trailing space as a cursor move)
        term.expect_exact("#lobby>")
        term.sendline("/join dev")
        term.expect_exact("joined #dev as ann")
        term.expect_exact("#dev>")
        term.sendline("/switch lobby")
        term.expect_exact("* now in #lobby")
        term.expect_exact("#lobby>")
        term.sendline("/leave")
        term.expect_exact("* left #lobby")
        term.expect_exact("#dev>")
        term.sendline("/quit")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)


async def _feed(chat_: TerminalChat, frame: dict[str, Any]) -> None:
    """``frame`` as the server sends it: one JSON text frame."""
    await chat_.on_text(json.dumps(frame))


async def _resume(chat_: TerminalChat, replayed: list[dict[str, Any]]) -> None:
    """The frames of a reconnect that resumes #lobby after seq 5 (epoch e1)."""
    await _feed(chat_, {"type": "welcome", "protocol": "hubbub.v1", "fd": 2, "nick": "ann"})
    await _feed(
        chat_,
        {"type": "room", "room": "lobby", "nick": "ann", "epoch": "e1", "seq": 7, "members": []},
    )
    for frame in replayed:
        await _feed(chat_, frame)
    await _feed(
        chat_,
        {"type": "resumed", "room": "lobby", "epoch": "e1", "since": 5, "seq": 7,
         "count": len(replayed)},
    )  # fmt: skip


def _message(seq: int, nick: str, text: str, client_id: str) -> dict[str, Any]:
    return {"type": "message", "room": "lobby", "seq": seq, "epoch": "e1", "id": f"m{seq}",
            "nick": nick, "text": text, "ts": 1.0, "client_id": client_id}  # fmt: skip


async def test_your_own_messages_are_not_counted_as_missed_after_a_reconnect():
    shown: list[str] = []
    term = TerminalChat("ws://127.0.0.1:9", "lobby", "ann", shown.append)
    view = term.state.rooms["lobby"]
    view.epoch, view.last_seq = "e1", 5  # joined before the connection dropped
    await term.handle_line("typed while offline")  # queued: no connection
    (cid,) = term.state.pending
    await _resume(term, [_message(6, "ann", "typed while offline", cid)])
    assert not any("missed" in line for line in shown), shown
    assert sum("<ann> typed while offline" in line for line in shown) == 1
    assert not term.state.pending

    # Someone else's message in the replay was missed; yours beside it was not.
    shown.clear()
    await term.handle_line("mine")
    (cid,) = term.state.pending
    view.last_seq = 6
    await _resume(
        term, [_message(7, "bob", "while you were away", "b-1"), _message(8, "ann", "mine", cid)]
    )
    assert [line for line in shown if "missed" in line] == ["* #lobby: 1 missed message(s) above"]


async def test_a_deleted_room_is_reported_as_deleted_not_as_left():
    shown: list[str] = []
    term = TerminalChat("ws://127.0.0.1:9", "ops", "ann", shown.append)
    term.state.rooms["lobby"] = RoomView("lobby")
    await _feed(term, {"type": "left_room", "room": "ops", "reason": "deleted"})
    assert shown == ["* #ops was deleted by an operator; you are no longer in it"]
    assert "ops" not in term.state.rooms and term.state.current == "lobby"
    shown.clear()
    await _feed(term, {"type": "left_room", "room": "lobby"})
    assert shown == ["* left #lobby"]
    assert term.state.current is None


async def test_server_frames_are_decoded_with_the_schema():
    shown: list[str] = []
    term = TerminalChat("ws://127.0.0.1:9", "lobby", "ann", shown.append)
    # A frame type this client does not know (a later server's) is ignored.
    await _feed(term, {"type": "future_thing", "x": 1})
    # A known frame that does not fit the schema is reported, and the client goes on.
    await _feed(term, {"type": "message", "room": "lobby", "seq": "not a number"})
    await _feed(term, {"type": "joined", "room": "lobby", "nick": "bob", "ts": 1.0, "new": 2})
    assert len(shown) == 2, shown
    assert shown[0].startswith("! unreadable frame: ")
    assert shown[1] == "* bob joined #lobby"  # unknown fields are ignored


async def test_client_frames_are_encoded_with_the_schema():
    sent: list[str] = []

    class Socket:
        async def send(self, data: str) -> None:
            sent.append(data)

    term = TerminalChat("ws://127.0.0.1:9", None, None, lambda _: None)
    term.ws = Socket()  # type: ignore[assignment]
    await term.handle_line("/join lobby")
    await term.handle_line("hello")
    await term.handle_line("/msg bob psst")
    await term.handle_line("/history")
    frames = [json.loads(data) for data in sent]
    assert frames[0] == {"type": "join", "room": "lobby"}
    assert frames[1]["type"] == "send" and frames[1]["text"] == "hello"
    assert frames[2]["type"] == "dm" and (frames[2]["to"], frames[2]["text"]) == ("bob", "psst")
    assert frames[3] == {"type": "history", "room": "lobby", "limit": 20}
    assert all(p.decode(data) for data in sent)  # every one is a valid client frame


def test_chat_over_wss_with_a_cafile(spawn, tmp_path):
    """`hubbub chat wss://... --cafile ca.pem` against `hubbub serve --certfile/--keyfile`."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(cafile)
    port = free_port()
    spawn(
        *serve_args(
            port,
            "--db",
            str(tmp_path / "t.db"),
            "--certfile",
            str(certfile),
            "--keyfile",
            str(keyfile),
        ),
        port=port,
    )
    child = chat(f"wss://127.0.0.1:{port}", "--nick", "ann", "--cafile", str(cafile))
    child.expect("joined #lobby as ann")
    child.sendline("over tls")
    child.expect(r"<ann> over tls")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    # Without the CA the certificate is refused: the client says why and stops
    # (retrying cannot make an untrusted certificate trusted).
    refused = chat(f"wss://127.0.0.1:{port}", "--nick", "bob")
    refused.expect("certificate verify failed")
    refused.expect(pexpect.EOF)
    refused.close()
    assert refused.exitstatus == 2


async def test_a_coalesced_presence_frame_is_shown_and_a_large_room_is_quiet():
    shown: list[str] = []
    term = TerminalChat("ws://127.0.0.1:9", "lobby", "ann", shown.append)
    frame = {
        "type": "presence", "room": "lobby", "count": 3, "ts": 1.0,
        "joined": [{"nick": "bob", "user": "u-bob"}, {"nick": "cat"}],
        "left": [{"nick": "eve"}], "renamed": [{"old": "dan", "nick": "dave"}],
    }  # fmt: skip
    await _feed(term, frame)
    assert shown == ["* bob, cat joined #lobby", "* eve left #lobby", "* dan is now dave in #lobby"]
    shown.clear()
    await _feed(term, {"type": "presence", "room": "big", "count": 9000, "ts": 2.0, "large": True})
    assert shown == []


def test_a_kick_by_an_administrator_is_said_and_not_retried():
    term = TerminalChat("ws://127.0.0.1:9", "lobby", "ann", lambda _: None)
    line = term._auth_closed(4000, "kicked by an administrator")
    assert line == "! disconnected by an administrator (kicked by an administrator)"
    assert term._auth_closed(1001, "going away") is None
