"""The browser's rules and the per-address limits: unit tests of transport.guard,
then the same rules over real sockets."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hubbub.transport.guard import (
    AddressCounter,
    RefusalLog,
    host_origin,
    origin_refusal,
    parse_allowed,
    parse_origin,
)
from hubbub.transport.messages import SECURITY_HEADERS

from .test_http import exchange, get, open_conn, post, read_reply, read_reply_or_none

# -- unit: the origin rule -------------------------------------------------------


def test_origins_are_normalised_with_default_ports():
    assert parse_origin("https://Example.COM") == ("https", "example.com", 443)
    assert parse_origin("http://example.com:80") == ("http", "example.com", 80)
    assert parse_origin("http://[::1]:9502") == ("http", "::1", 9502)
    for bad in ("null", "", "ftp://x", "http://a@b", "http://x/path", "http://x:99999"):
        assert parse_origin(bad) is None, bad


def test_host_header_takes_the_scheme_of_the_connection():
    assert host_origin("chat.example:9502", tls=False) == ("http", "chat.example", 9502)
    assert host_origin("chat.example", tls=True) == ("https", "chat.example", 443)
    assert host_origin("a@b", tls=False) is None


@pytest.mark.parametrize(
    ("origin", "host", "tls", "allowed", "ok"),
    [
        (None, "x:1", False, "", True),  # a program, not a page
        ("http://x:1", "x:1", False, "", True),  # own origin
        ("http://X:1", "x:1", False, "", True),
        ("https://x:1", "x:1", False, "", False),  # other scheme
        ("https://x", "x:443", True, "", True),
        ("http://x", "x:443", True, "", False),
        ("http://evil:1", "x:1", False, "", False),
        ("http://evil:1", "x:1", False, "http://evil:1", True),
        ("http://evil:1", "x:1", False, "https://a.example, http://evil:1", True),
        ("http://evil:1", "x:1", False, "*", True),
        ("null", "x:1", False, "", False),
        ("http://x:2", "x:1", False, "", False),  # other port
    ],
)
def test_origin_rule(origin, host, tls, allowed, ok):
    headers = {"host": host} if origin is None else {"host": host, "origin": origin}
    refused = origin_refusal(headers, tls, allowed)
    assert (refused is None) is ok
    if not ok:
        assert "is not allowed" in refused and "--allowed-origins" in refused


def test_allowed_origins_setting_is_checked():
    assert parse_allowed("*") == (True, frozenset())
    with pytest.raises(ValueError, match="not an origin"):
        parse_allowed("example.com")


def test_address_counter_forgets_addresses_at_zero():
    c = AddressCounter()
    c.add("a")
    c.add("a")
    c.add("b")
    assert (c.get("a"), c.total) == (2, 3)
    c.remove("a")
    c.remove("a")
    c.remove("a")  # one too many: ignored
    assert c.counts == {"b": 1} and c.total == 1


def test_refusal_log_reports_once_per_period_with_a_count(caplog):
    now = [100.0]
    rl = RefusalLog(logging.getLogger("test.refusals"), period=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.refusals")
    assert rl.refused("per_ip", "x")
    for _ in range(500):
        assert not rl.refused("per_ip", "x")
    assert rl.refused("pending", "y")  # another cause has its own line
    now[0] += 10.0
    assert rl.refused("per_ip", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "500 more refused" in lines[2]


# -- real sockets: headers --------------------------------------------------------

SECURITY_NAMES = [name.lower() for name, _ in SECURITY_HEADERS]


async def test_every_response_carries_the_security_headers(make_chat):
    server = await make_chat()
    for request in (get("/"), get("/healthz"), get("/api/rooms"), get("/nope"), b"BAD\r\n\r\n"):
        reply, _ = await exchange(server, request)
        for name in SECURITY_NAMES:
            assert sum(1 for n, _ in reply.lines if n.lower() == name) == 1, (request, name)
        csp = reply.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["x-content-type-options"] == "nosniff"


async def test_a_handler_overrides_a_security_header_for_its_response(make_server):
    def on_request(req, resp):
        if req.path == "/embed":
            resp.header("Content-Security-Policy", "frame-ancestors https://a.example")
        resp.end("x")

    server = await make_server(lambda s: s.on("request", on_request))
    reply, _ = await exchange(server, get("/embed"))
    csps = [v for n, v in reply.lines if n.lower() == "content-security-policy"]
    assert csps == ["frame-ancestors https://a.example"]
    reply, _ = await exchange(server, get("/other"))
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    server.security_headers = ()
    reply, _ = await exchange(server, get("/other"))
    assert "content-security-policy" not in reply.headers


# -- real sockets: Origin -----------------------------------------------------------


def upgrade(origin: str | None, host: str) -> bytes:
    extra = f"Origin: {origin}\r\n" if origin else ""
    return (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


async def handshake_status(server, origin: str | None, host: str | None = None) -> int:
    reader, writer = await open_conn(server)
    try:
        writer.write(upgrade(origin, host or f"127.0.0.1:{server.port}"))
        reply = await read_reply(reader, head_only=True)
        return reply.status
    finally:
        writer.close()


async def test_websocket_upgrade_from_a_foreign_origin_is_403(make_chat):
    server = await make_chat()
    own = f"http://127.0.0.1:{server.port}"
    assert await handshake_status(server, None) == 101
    assert await handshake_status(server, own) == 101
    assert await handshake_status(server, "http://evil.example") == 403
    assert await handshake_status(server, f"https://127.0.0.1:{server.port}") == 403
    reply, _ = await exchange(server, upgrade("http://evil.example", "127.0.0.1"))
    assert reply.status == 403
    assert b"'http://evil.example' is not allowed" in reply.body
    assert server._endpoint.all == {}


async def test_allowed_origins_list_and_star(make_chat):
    server = await make_chat(allowed_origins="https://chat.example")
    assert await handshake_status(server, "https://chat.example") == 101
    assert await handshake_status(server, "https://other.example") == 403
    server2 = await make_chat(allowed_origins="*", db=":memory:")
    assert await handshake_status(server2, "https://other.example") == 101


async def test_state_changing_request_from_a_foreign_origin_is_403(make_chat):
    server = await make_chat(api_key="k")
    body = b'{"text":"hi","nick":"ci"}'
    head = (
        "POST /api/rooms/ops/messages HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        "Authorization: Bearer k\r\nOrigin: http://evil.example\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reply, _ = await exchange(server, head + body)
    assert reply.status == 403
    # A GET from a foreign page is allowed (it cannot read the answer anyway).
    reply, _ = await exchange(server, get("/api/rooms", extra="Origin: http://evil.example\r\n"))
    assert reply.status == 200
    # No Origin: a program, allowed.
    reply, _ = await exchange(
        server,
        post("/api/rooms/ops/messages", body).replace(
            b"Host: test\r\n", b"Host: test\r\nAuthorization: Bearer k\r\n"
        ),
    )
    assert reply.status in (200, 201)


# -- real sockets: per-address limits -------------------------------------------------


async def test_connections_per_ip_are_limited_and_freed(make_server, caplog):
    caplog.set_level(logging.WARNING, logger="hubbub")
    server = await make_server(max_connections_per_ip=3, unlimited_addresses="")
    conns = [await open_conn(server) for _ in range(3)]
    # Three held (one finishes its head: still a connection of that address).
    conns[0][1].write(get("/healthz", close=False))
    assert (await read_reply(conns[0][0])).status == 200
    refused = []
    for _ in range(5):
        reader, writer = await open_conn(server)
        reply = await read_reply_or_none(reader)
        refused.append(reply)
        writer.close()
    assert all(r is not None and r.status == 503 for r in refused)
    assert b"Too many connections from your address" in refused[0].body
    logged = [r for r in caplog.records if "max_connections_per_ip" in r.getMessage()]
    assert len(logged) == 1  # once per cause, not once per connection
    for _, writer in conns:
        writer.close()
    await _until(lambda: server._endpoint.per_ip.total == 0)
    reply, _ = await exchange(server, get("/healthz"))
    assert reply.status == 200


async def test_websockets_count_against_the_per_ip_limit(make_chat):
    from websockets.asyncio.client import connect

    server = await make_chat(max_connections_per_ip=2, unlimited_addresses="")
    url = f"ws://127.0.0.1:{server.port}/"
    async with connect(url), connect(url):
        assert await handshake_status(server, None) == 503
    await _until(lambda: server._endpoint.per_ip.total == 0)
    async with connect(url):
        pass


async def test_loopback_is_unlimited_by_default(make_server):
    server = await make_server(max_connections_per_ip=1)
    a = await open_conn(server)
    reply, _ = await exchange(server, get("/healthz"))
    assert reply.status == 200
    a[1].close()


async def test_pending_handshakes_are_limited(make_server):
    server = await make_server(max_pending_handshakes=2, unlimited_addresses="")
    silent = [await open_conn(server) for _ in range(2)]  # never send a head
    await _until(lambda: server._endpoint.pending.total == 2)
    reader, writer = await open_conn(server)
    reply = await read_reply_or_none(reader)
    assert reply is not None and reply.status == 503
    writer.close()
    # One finishes its head: no longer pending, so a new connection is served.
    silent[0][1].write(get("/healthz", close=False))
    assert (await read_reply(silent[0][0])).status == 200
    reply, _ = await exchange(server, get("/healthz"))
    assert reply.status == 200
    for _, w in silent:
        w.close()
    await _until(lambda: server._endpoint.pending.total == 0)


async def test_pending_handshakes_per_ip(make_server):
    server = await make_server(max_pending_handshakes_per_ip=1, unlimited_addresses="")
    silent = await open_conn(server)
    await _until(lambda: server._endpoint.pending.total == 1)
    reader, writer = await open_conn(server)
    reply = await read_reply_or_none(reader)
    assert reply is not None and reply.status == 503
    writer.close()
    silent[1].close()


async def _until(cond, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)
