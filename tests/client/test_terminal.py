"""`hubbub chat` driven in a pseudo-terminal against real servers."""

from __future__ import annotations

import io
import json
import signal
import sys
from typing import Any

import pexpect
import pytest
from websockets.sync.client import connect

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
