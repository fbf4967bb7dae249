"""The seed-mode benchmark peers speak the seed's protocol, as hubbub's seed room does.

A peer that greets differently, skips the sender, answers before broadcasting or
lets invalid UTF-8 through would be measured doing other work than hubbub, so
every peer of ``make bench``'s seed scenarios is checked the same way here:
the greeting, ``from <fd>: T`` to every client (the sender too) and then
``server: T`` to the sender, binary relayed as binary, 1007 for invalid UTF-8.
The Node peers need ``make node-deps`` (``npm install --prefix bench/peers/...``).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

pytest.importorskip("picows", reason="the bench extra is not installed")

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers"

#: name: (argv before the port, a file that must exist, how to install it)
PEER_COMMANDS: dict[str, tuple[list[str], Path, str]] = {
    "node_ws": (
        ["node", str(PEERS / "node_ws" / "server.js")],
        PEERS / "node_ws" / "node_modules" / "ws",
        "npm install --prefix bench/peers/node_ws",
    ),
    "uws": (
        ["node", str(PEERS / "uws_node" / "server.js")],
        PEERS / "uws_node" / "node_modules" / "@trufflesuite" / "uws-js-unofficial",
        "npm install --prefix bench/peers/uws_node",
    ),
    "picows": (
        [sys.executable, str(PEERS / "picows_peer.py")],
        PEERS / "picows_peer.py",
        "pip install -e '.[bench]'",
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=sorted(PEER_COMMANDS))
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The peer ``request.param`` listening on a free port: its URL."""
    argv, needed, install = PEER_COMMANDS[request.param]
    if not needed.exists():
        pytest.fail(f"{request.param} peer is not installed: {install} (or make node-deps)")
    port = _free_port()
    log = tmp_path / "peer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"peer exited: {log.read_text(errors='replace')}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "peer did not listen within 20 s"
                time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _open(url: str) -> ClientConnection:
    ws = await connect(url, compression=None, open_timeout=10)
    assert await asyncio.wait_for(ws.recv(), 5) == "Hello, welcome\n"
    return ws


async def _talk(url: str, drops_bad_text: bool) -> None:
    a = await _open(url)
    b = await _open(url)
    # One message from each to learn the fds the peer gave them.
    await a.send("one")
    heard_b = await asyncio.wait_for(b.recv(), 5)
    assert isinstance(heard_b, str) and heard_b.startswith("from ") and heard_b.endswith(": one")
    fd_a = heard_b[len("from ") : -len(": one")]
    assert fd_a.isdigit()
    # The sender gets the broadcast first, then the answer.
    assert await asyncio.wait_for(a.recv(), 5) == f"from {fd_a}: one"
    assert await asyncio.wait_for(a.recv(), 5) == "server: one"

    await b.send("two é")
    got_a = await asyncio.wait_for(a.recv(), 5)
    assert isinstance(got_a, str) and got_a.startswith("from ") and got_a.endswith(": two é")
    fd_b = got_a[len("from ") : -len(": two é")]
    assert fd_b.isdigit() and fd_b != fd_a
    assert await asyncio.wait_for(b.recv(), 5) == f"from {fd_b}: two é"
    assert await asyncio.wait_for(b.recv(), 5) == "server: two é"

    # Binary is relayed as binary.
    await a.send(b"\x00\xff")
    assert await asyncio.wait_for(b.recv(), 5) == f"from {fd_a}: ".encode() + b"\x00\xff"
    assert await asyncio.wait_for(a.recv(), 5) == f"from {fd_a}: ".encode() + b"\x00\xff"
    assert await asyncio.wait_for(a.recv(), 5) == b"server: \x00\xff"

    # Invalid UTF-8 in a text frame ends the connection (1007; uWebSockets drops it
    # without a Close frame), and the others keep talking.
    await b.send(b"\xc3\x28", text=True)
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(b.recv(), 5)
    rcvd = closed.value.rcvd
    if drops_bad_text:
        assert rcvd is None
    else:
        assert rcvd is not None and rcvd.code == 1007
    await a.send("three")
    assert await asyncio.wait_for(a.recv(), 5) == f"from {fd_a}: three"
    assert await asyncio.wait_for(a.recv(), 5) == "server: three"
    await a.close()


def test_peer_speaks_the_seed_protocol(peer: str, request: pytest.FixtureRequest) -> None:
    asyncio.run(_talk(peer, drops_bad_text=request.node.callspec.params["peer"] == "uws"))
