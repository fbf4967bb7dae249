"""The picows socket.io client (``--protocol socket.io``, ``--socketio-client picows``).

Against the python-socketio peer (bench/peers/python_socketio_peer.py, a
subprocess), and against a small Engine.IO v4 / Socket.IO v5 imitation on
hubbub's own :class:`~hubbub.Server` that pings every client and sends
events no client expects. Needs no Node.js.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from hubbub import Server
from hubbub.bench.generator import Generator
from hubbub.bench.options import Options
from hubbub.bench.scenarios import fanout, make_generator
from hubbub.bench.sioclients import socketio_url

from ..conftest import free_port, ws_url
from .helpers import SOCKETIO_PEER, check_socketio_runs, socketio_room

pytest.importorskip("picows", reason="the bench extra is not installed")


@pytest.fixture
def socketio_peer(spawn) -> tuple[str, int]:
    """bench/peers/python_socketio_peer.py on a free port: (url, pid)."""
    pytest.importorskip("socketio", reason="the bench extra is not installed")
    port = free_port()
    proc = spawn(SOCKETIO_PEER, str(port), port=port)
    return f"ws://127.0.0.1:{port}/", proc.pid


def test_the_url_path_becomes_the_engine_io_endpoint() -> None:
    expected = "ws://127.0.0.1:9502/socket.io/?EIO=4&transport=websocket"
    assert socketio_url("ws://127.0.0.1:9502/") == expected
    assert socketio_url("ws://127.0.0.1:9502") == expected
    assert socketio_url("ws://127.0.0.1:9502/chat?x=1#f") == expected
    assert socketio_url("wss://h:8443/a") == "wss://h:8443/socket.io/?EIO=4&transport=websocket"


def test_picows_is_the_default_socketio_client_and_node_is_checked() -> None:
    from hubbub.bench.nodegen import NodeGenerator

    opts = Options(protocol="socket.io", progress=False)
    opts.validate()
    assert opts.socketio_client == "picows"
    gen = make_generator(opts)
    assert type(gen) is Generator
    opts.socketio_client = "node"
    assert isinstance(make_generator(opts), NodeGenerator)
    opts.socketio_client = "python"
    with pytest.raises(ValueError, match="--socketio-client"):
        opts.validate()


def test_the_cli_passes_socketio_client() -> None:
    from hubbub.bench.cli import build_parser, options_from_args

    parser = build_parser()
    opts = options_from_args(parser.parse_args(["--protocol", "socket.io"]))
    assert opts.socketio_client == "picows"
    args = parser.parse_args(["--protocol", "socket.io", "--socketio-client", "node"])
    assert options_from_args(args).socketio_client == "node"
    with pytest.raises(SystemExit):
        parser.parse_args(["--socketio-client", "python"])


async def test_fanout_and_latency_against_python_socketio_lose_nothing(
    socketio_peer: tuple[str, int],
) -> None:
    await check_socketio_runs(*socketio_peer, "picows")


# -- an imitation socket.io server that misbehaves ------------------------------

_OPEN = json.dumps(
    {"sid": "x", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 10**6}
)
_EVENT = re.compile(r"42(\d*)(\[.*)\Z", re.S)


class FakeSocketIO:
    """The socket.io chat server of the peers, on hubbub's Server, minus the library.

    Pings every client once it has joined (counting the pongs), and every
    ``typing_every``-th message also sends the sender a ``typing`` event,
    which no bench client expects.
    """

    def __init__(self, typing_every: int = 0) -> None:
        self.typing_every = typing_every
        self.members: list[int] = []
        self.nicks: dict[int, str] = {}
        self.seq = 0
        self.pongs = 0
        self.typing_sent = 0

    def setup(self, server: Server) -> None:
        server.on("open", self.on_open)
        server.on("message", self.on_message)

    def on_open(self, server: Server, request: Any) -> None:
        server.push(request.fd, "0" + _OPEN)

    def on_message(self, server: Server, frame: Any) -> None:
        fd, data = frame.fd, frame.data
        if data == "3":
            self.pongs += 1
            return
        if data == "40":
            server.push(fd, f'40{{"sid":"s{fd}"}}')
            return
        m = _EVENT.match(data)
        assert m is not None, data
        ack_id = m.group(1)
        name, arg = json.loads(m.group(2))
        if name == "join":
            self.members.append(fd)
            self.nicks[fd] = arg["nick"]
            answer = json.dumps([{"room": arg["room"], "members": len(self.members)}])
            server.push(fd, f"43{ack_id}{answer}")
            server.push(fd, "2")
            return
        assert name == "send", data
        self.seq += 1
        msg = {
            "room": arg["room"],
            "seq": self.seq,
            "id": str(self.seq),
            "nick": self.nicks[fd],
            "text": arg["text"],
            "ts": 0.0,
            "client_id": arg["id"],
        }
        server.push_many(self.members, "42" + json.dumps(["message", msg]))
        if self.typing_every and self.seq % self.typing_every == 0:
            server.push(fd, '42["typing",{"room":"bench"}]')
            self.typing_sent += 1
        answer = json.dumps([{"id": arg["id"], "seq": self.seq}])
        server.push(fd, f"43{ack_id}{answer}")


async def test_pings_are_answered_and_unexpected_events_counted(make_server) -> None:
    fake = FakeSocketIO(typing_every=10)
    server = await make_server(setup=fake.setup)
    opts = socketio_room(ws_url(server, "/anything"), os.getpid(), clients=10, duration=0.5)
    result = await fanout(opts)
    assert fake.pongs == 10  # one ping per client, each answered
    assert fake.typing_sent > 0
    chk = result["check"]
    assert chk["malformed"] == fake.typing_sent
    assert not result["ok"]
    assert any('unexpected frame: b\'42["typing"' in e for e in result["errors"])
    assert any("malformed" in e for e in result["errors"])
    # The rest of the run is unharmed: every message reached every client.
    assert chk["lost"] == chk["duplicated"] == chk["reordered"] == chk["echo_errors"] == 0
    assert chk["deliveries"] == chk["expected"] == 10 * result["messages_sent"] > 0


async def test_a_room_seq_that_does_not_grow_is_malformed(make_server) -> None:
    fake = FakeSocketIO()
    server = await make_server(setup=fake.setup)
    # Every send restarts the room's numbering: each receiver sees seq 1 again.
    original = fake.on_message

    def on_message(server: Server, frame: Any) -> None:
        fake.seq = 0
        original(server, frame)

    server.on("message", on_message)
    result = await fanout(socketio_room(ws_url(server), os.getpid(), clients=5, senders=1))
    chk = result["check"]
    # All but each receiver's first message.
    assert chk["malformed"] == 5 * (result["messages_sent"] - 1) > 0
    assert any("seq 1 after 1" in e for e in result["errors"])
    assert chk["lost"] == 0
