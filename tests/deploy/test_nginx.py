"""deploy/nginx.conf, run by Debian's nginx in front of a real ``hubbub serve``: TLS
termination, WebSocket chat (seed protocol and hubbub.v1), the fallback transports
(Server-Sent Events and long polling, chatting with a WebSocket member), the HTTP API,
static pages, the proxy headers, and the HTTP-to-HTTPS redirect.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from typing import Any

from websockets.asyncio.client import connect

from hubbub import Server

from ..apps.test_chat import Client
from ..conftest import ROOT, free_port, recv_all, serve_args
from ..transport.session_clients import SessionSocket
from .conftest import Cert, NginxPorts

API_KEY = "test-key-through-nginx"


def _request(
    port: int,
    method: str,
    path: str,
    tls: ssl.SSLContext | None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    if tls is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def _https(port: int, cert: Cert, method: str, path: str, **kw: Any):
    return await asyncio.to_thread(_request, port, method, path, cert.client_context(), **kw)


async def test_chat_api_and_pages_through_nginx(spawn, run_nginx, cert: Cert, tmp_path) -> None:
    ports = NginxPorts(free_port(), free_port(), free_port())
    spawn(
        *serve_args(ports.upstream, "--db", str(tmp_path / "hubbub.db"), "--api-key", API_KEY),
        port=ports.upstream,
    )
    run_nginx(ports)
    tls = cert.client_context()
    url = f"wss://127.0.0.1:{ports.https}/"

    # The seed protocol, byte for byte, through the proxy.
    async with connect(url, ssl=tls) as one, connect(url, ssl=tls) as two:
        assert await recv_all(one, 1) == ["Hello, welcome\n"]
        assert await recv_all(two, 1) == ["Hello, welcome\n"]
        await one.send("hi through nginx")
        (got,) = await recv_all(two, 1)
        assert got.startswith("from ") and got.endswith(": hi through nginx")
        assert await recv_all(one, 2) == [got, "server: hi through nginx"]
        big = "x" * 60_000  # a large frame crosses unchanged
        await two.send(big)
        assert (await recv_all(one, 1))[0].endswith(": " + big)

    # hubbub.v1 (the subprotocol is negotiated through nginx).
    ws_ann = await connect(url, ssl=tls, subprotocols=["hubbub.v1"])
    ws_bob = await connect(url, ssl=tls, subprotocols=["hubbub.v1"])
    assert ws_ann.subprotocol == "hubbub.v1"
    ann, bob = Client(ws_ann), Client(ws_bob)
    for client, nick in ((ann, "ann"), (bob, "bob")):
        await client.expect("welcome", protocol="hubbub.v1")
        await client.join("lobby", nick)
    await ann.expect("joined", nick="bob")
    await ann.send(type="send", room="lobby", id="c-1", text="hello bob")
    message = await bob.expect("message", text="hello bob", nick="ann")
    await ann.expect("message", seq=message["seq"])
    await ann.expect("ack", id="c-1", seq=message["seq"], duplicate=False)

    # SSE and long polling through nginx, in the same room. Events must pass at
    # once (proxy_buffering off): a buffered stream would stall these waits.
    base = f"https://127.0.0.1:{ports.https}"
    for kind, nick in (("sse", "sam"), ("poll", "pol")):
        other = Client(await SessionSocket.open(base, kind, ssl=tls))
        await other.expect("welcome", protocol="hubbub.v1")
        await other.join("lobby", nick)
        await ann.expect("joined", nick=nick)
        await bob.expect("joined", nick=nick)
        await other.send(type="send", room="lobby", id=f"{kind}-1", text=f"hi from {kind}")
        got = await ann.expect("message", text=f"hi from {kind}", nick=nick)
        await bob.expect("message", seq=got["seq"])
        await other.expect("message", seq=got["seq"])
        await other.expect("ack", id=f"{kind}-1", seq=got["seq"])
        await ann.send(type="send", room="lobby", id=f"c-{kind}", text=f"hello {nick}")
        await other.expect("message", text=f"hello {nick}", nick="ann")
        await bob.expect("message", text=f"hello {nick}")
        await ann.expect("message", text=f"hello {nick}")
        await ann.expect("ack", id=f"c-{kind}")
        await other.close()
        await ann.expect("left", nick=nick)
        await bob.expect("left", nick=nick)
        message = got

    # The HTTP API: read, and post with the key (the members get it live).
    status, _, body = await _https(ports.https, cert, "GET", "/api/rooms")
    assert status == 200
    assert json.loads(body)["rooms"] == [{"name": "lobby", "members": 2, "seq": message["seq"] + 1}]
    status, _, body = await _https(
        ports.https,
        cert,
        "POST",
        "/api/rooms/lobby/messages",
        body=json.dumps({"text": "deploy done", "nick": "ci"}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert status in (200, 201), body
    await bob.expect("message", text="deploy done", nick="ci")
    status, _, body = await _https(ports.https, cert, "GET", "/api/rooms/lobby/messages")
    assert [m["text"] for m in json.loads(body)["messages"]] == [
        "hello bob",
        "hi from sse",
        "hello sam",
        "hi from poll",
        "hello pol",
        "deploy done",
    ]
    await ann.close()
    await bob.close()

    # Static pages and the health check.
    static = ROOT / "src" / "hubbub" / "static"
    for path, name in (("/", "index.html"), ("/seed.html", "seed.html")):
        status, headers, body = await _https(ports.https, cert, "GET", path)
        assert status == 200 and body == (static / name).read_bytes(), path
        assert headers["strict-transport-security"] == "max-age=31536000"
    status, _, body = await _https(ports.https, cert, "GET", "/static/app.js")
    assert status == 200 and body == (static / "app.js").read_bytes()
    assert (await _https(ports.https, cert, "GET", "/healthz"))[0] == 200
    assert (await _https(ports.https, cert, "GET", "/nothing-here"))[0] == 404


async def test_plain_http_redirects_to_https(spawn, run_nginx, cert: Cert, tmp_path) -> None:
    ports = NginxPorts(free_port(), free_port(), free_port())
    spawn(*serve_args(ports.upstream, "--db", str(tmp_path / "hubbub.db")), port=ports.upstream)
    run_nginx(ports)
    status, headers, _ = await asyncio.to_thread(
        _request, ports.http, "GET", "/api/rooms?x=1", None
    )
    assert status == 301 and headers["location"] == "https://127.0.0.1/api/rooms?x=1"


async def test_hubbub_gets_the_client_address_scheme_and_keep_alive_from_nginx(
    make_server, run_nginx, cert: Cert
) -> None:
    """The forwarding headers reach hubbub, on plain requests and on WebSocket handshakes
    (hubbub's access log shows the proxy's address; an app reads these headers)."""
    seen: list[dict[str, str]] = []
    remotes: list[Any] = []

    def setup(server: Server) -> None:
        def on_request(request: Any, response: Any) -> None:
            seen.append(dict(request.headers))
            remotes.append(request.remote)
            response.end("ok")

        def on_open(ws: Server, request: Any) -> None:
            seen.append(dict(request.headers))
            ws.push(request.fd, "open")

        server.on("request", on_request)
        server.on("open", on_open)
        server.on("message", lambda ws, frame: None)

    server = await make_server(setup)
    ports = NginxPorts(server.port, free_port(), free_port())
    run_nginx(ports)
    for _ in range(3):
        assert (await _https(ports.https, cert, "GET", "/whatever"))[0] == 200
    # nginx keeps its connection to hubbub open (HTTP/1.1 keep-alive) between requests.
    assert remotes[0] == remotes[1] == remotes[2], remotes
    del seen[1:]
    async with connect(f"wss://127.0.0.1:{ports.https}/", ssl=cert.client_context()) as ws:
        assert await recv_all(ws, 1) == ["open"]
    plain, handshake = seen
    for headers in (plain, handshake):
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "https"
        assert headers["host"] == "127.0.0.1"
    assert handshake["upgrade"].lower() == "websocket"
    assert handshake["connection"].lower() == "upgrade"
    assert "connection" not in plain  # keep-alive to hubbub, no "Connection: close"


async def test_hubbub_takes_the_client_address_from_nginx_when_told_to(
    make_server, run_nginx, cert: Cert
) -> None:
    """With --forwarded-allow-ips naming nginx, hubbub's handlers, connection_info and
    per-address counts see the client (here 127.0.0.2, a second loopback address), not
    nginx's 127.0.0.1, even when the client sends an X-Forwarded-For of its own."""
    remotes: list[Any] = []

    def setup(server: Server) -> None:
        def on_request(request: Any, response: Any) -> None:
            remotes.append(request.remote)
            response.end("ok")

        server.on("request", on_request)
        server.on("open", lambda ws, request: ws.push(request.fd, "open"))

    server = await make_server(setup, forwarded_allow_ips="127.0.0.1", allowed_hosts="127.0.0.1")

    def from_client() -> int:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", ports.https, timeout=10, context=cert.client_context(),
            source_address=("127.0.0.2", 0),
        )  # fmt: skip
        try:
            conn.request("GET", "/who", headers={"X-Forwarded-For": "6.6.6.6"})
            return conn.getresponse().status
        finally:
            conn.close()

    ports = NginxPorts(server.port, free_port(), free_port())
    run_nginx(ports)
    assert await asyncio.to_thread(from_client) == 200
    assert remotes == [("127.0.0.2", 0)]
    url = f"wss://127.0.0.1:{ports.https}/"
    async with connect(url, ssl=cert.client_context(), local_addr=("127.0.0.2", 0)) as ws:
        assert await recv_all(ws, 1) == ["open"]
        (fd,) = server.connections
        assert server.connection_info(fd)["remote_ip"] == "127.0.0.2"
        assert server._endpoint.per_ip.get("127.0.0.2") == 1
