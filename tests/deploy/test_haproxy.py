"""deploy/haproxy.cfg, run by Debian's haproxy in front of two ``hubbub serve`` nodes:
round robin, health checks on /healthz, no error while a node dies, WebSocket chat
through the TLS frontend, the HTTP-to-HTTPS redirect.

The nodes have a database each here (the SQLite store is one process per file),
so which node answered shows in ``GET /api/rooms``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

from websockets.asyncio.client import connect

from ..conftest import free_port, recv_all, serve_args
from .conftest import Cert, HaproxyPorts
from .test_nginx import _request

API_KEY = "test-key-through-haproxy"


async def test_round_robin_health_checks_and_chat_through_haproxy(
    spawn, run_haproxy, cert: Cert, tmp_path
) -> None:
    ports = HaproxyPorts((free_port(), free_port()), free_port(), free_port())
    nodes = [
        spawn(
            *serve_args(port, "--db", str(tmp_path / f"node{i}.db"), "--api-key", API_KEY),
            port=port,
        )
        for i, port in enumerate(ports.nodes, 1)
    ]
    # Node 1 has a room called after it; node 2 has none.
    status, _, _ = await asyncio.to_thread(
        _request,
        ports.nodes[0],
        "POST",
        "/api/rooms/node1/messages",
        None,
        body=json.dumps({"text": "i am node 1", "nick": "ops"}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert status in (200, 201)
    proxy = run_haproxy(ports)
    tls = cert.client_context()

    async def which_node() -> str:
        status, _, body = await asyncio.to_thread(
            _request, ports.https, "GET", "/api/rooms", tls
        )
        assert status == 200, (status, body)
        return "node1" if json.loads(body)["rooms"] else "node2"

    # Round robin over both nodes, once the health checks have seen them up.
    answers: set[str] = set()
    deadline = time.monotonic() + 20
    while answers != {"node1", "node2"}:
        assert time.monotonic() < deadline, f"only {answers} answered"
        answers.add(await which_node())

    # Node 2 goes away: no request fails (a refused connection is redispatched),
    # and once its health check fails every request goes to node 1.
    nodes[1].send_signal(signal.SIGTERM)
    assert nodes[1].wait(timeout=15) == 0
    recent: list[str] = []
    deadline = time.monotonic() + 30
    while recent[-6:] != ["node1"] * 6 or "node2 is DOWN" not in proxy.output():
        assert time.monotonic() < deadline, (recent, proxy.output())
        recent.append(await which_node())

    url = f"wss://127.0.0.1:{ports.https}/"
    async with connect(url, ssl=tls) as one, connect(url, ssl=tls) as two:
        assert await recv_all(one, 1) == ["Hello, welcome\n"]
        assert await recv_all(two, 1) == ["Hello, welcome\n"]
        await one.send("hi through haproxy")
        (got,) = await recv_all(two, 1)
        assert got.endswith(": hi through haproxy")
        assert await recv_all(one, 2) == [got, "server: hi through haproxy"]
    async with connect(url, ssl=tls, subprotocols=["hubbub.v1"]) as v1:
        welcome = json.loads(await asyncio.wait_for(v1.recv(), 5))
        assert welcome["type"] == "welcome" and v1.subprotocol == "hubbub.v1"

    status, headers, _ = await asyncio.to_thread(_request, ports.http, "GET", "/x?y=1", None)
    assert status == 301 and headers["location"] == f"https://127.0.0.1:{ports.http}/x?y=1"

    # The health checks were HTTP requests for /healthz (hubbub's access log says so).
    nodes[0].send_signal(signal.SIGTERM)
    out = nodes[0].communicate(timeout=15)[0]
    assert '"GET /healthz" 200' in out, out[-2000:]
