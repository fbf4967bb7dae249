"""The client's address behind reverse proxies (``--forwarded-allow-ips``): unit tests
of transport.forwarded, then over real sockets (the per-address limit, the access log,
connection_info, sessions).

The socket tests need the transport's call of ``http_request_head`` (the http.py and
endpoint.py diffs of H7's report); they are skipped until it is there."""

from __future__ import annotations

import json
import logging

import pytest
from websockets.asyncio.client import connect

from hubbub.config import SettingError, Settings
from hubbub.transport.forwarded import (
    MAX_HOPS,
    BadForwarded,
    Proxies,
    forwarded_client,
    parse_node,
    trusted_proxy,
)

from .test_guard import _until, upgrade
from .test_http import open_conn, read_reply

PROXY = ("127.0.0.1", 40000)
# -- unit: parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address", "port"),
    [
        ("203.0.113.9", "203.0.113.9", 0),
        (" 203.0.113.9:5678 ", "203.0.113.9", 5678),
        ("2001:DB8::1", "2001:db8::1", 0),
        ("[2001:db8::1]", "2001:db8::1", 0),
        ("[2001:db8::1]:4711", "2001:db8::1", 4711),
        ("::ffff:198.51.100.7", "198.51.100.7", 0),  # IPv4-mapped: the IPv4 address
        ("198.51.100.7:_hidden", "198.51.100.7", 0),  # an obfuscated port (RFC 7239 6.3)
    ],
)
def test_nodes(text, address, port):
    ip, got_port = parse_node(text)
    assert (str(ip), got_port) == (address, port)


@pytest.mark.parametrize(
    "text", ["unknown", "_hidden", "", "example.com", "1.2.3.4:99999", "[::1", "[::1]x", "1.2.3"]
)
def test_bad_nodes(text):
    with pytest.raises(BadForwarded):
        parse_node(text)


def test_the_client_is_the_right_most_address_that_is_not_a_trusted_proxy():
    px = Proxies("127.0.0.1, 10.0.0.0/8")
    xff = {"x-forwarded-for": "6.6.6.6, 203.0.113.9, 10.1.2.3"}
    assert px.client(xff) == ("203.0.113.9", 0)  # 6.6.6.6 was written by the client
    assert px.client({"x-forwarded-for": "203.0.113.9"}) == ("203.0.113.9", 0)
    # Every hop trusted: the left-most one (a proxy that asked for itself).
    assert px.client({"x-forwarded-for": "10.9.9.9, 10.1.2.3"}) == ("10.9.9.9", 0)
    assert px.client({}) is None
    assert px.client({"x-forwarded-for": " "}) is None
    # Garbage left of the client's address is never looked at.
    junk = {"x-forwarded-for": "x" * 10_000 + ", not-an-address, 203.0.113.9"}
    assert px.client(junk) == ("203.0.113.9", 0)


def test_a_bad_right_most_hop_is_refused():
    px = Proxies("127.0.0.1")
    for value in ("203.0.113.9, garbage", "unknown", "203.0.113.9:80:80"):
        with pytest.raises(BadForwarded):
            px.client({"x-forwarded-for": value})


def test_hops_are_bounded():
    px = Proxies("10.0.0.0/8")
    hops = ", ".join(f"10.0.0.{i}" for i in range(MAX_HOPS))
    assert px.client({"x-forwarded-for": hops}) == ("10.0.0.0", 0)
    with pytest.raises(BadForwarded, match="more than"):
        px.client({"x-forwarded-for": "10.0.0.99, " + hops})
    with pytest.raises(BadForwarded, match="characters"):
        px.client({"x-forwarded-for": "203.0.113.9" + " " * 600})


def test_rfc_7239_forwarded():
    px = Proxies("127.0.0.1", "forwarded")
    value = 'for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https;by=127.0.0.1'
    assert px.client({"forwarded": value}) == ("2001:db8:cafe::17", 4711)
    assert px.client({"forwarded": "for=192.0.2.60;proto=http"}) == ("192.0.2.60", 0)
    for bad in ("proto=https", "for=unknown", 'for="_gazonk"'):
        with pytest.raises(BadForwarded):
            px.client({"forwarded": bad})
    # Only the configured header is read: the other one is the client's own text.
    assert px.client({"x-forwarded-for": "6.6.6.6"}) is None
    assert Proxies("127.0.0.1").client({"forwarded": "for=6.6.6.6"}) is None


def test_only_trusted_peers_are_believed():
    s = Settings(forwarded_allow_ips="192.0.2.1, 10.0.0.0/8")
    xff = {"x-forwarded-for": "203.0.113.9"}
    assert forwarded_client(s, ("192.0.2.1", 1), xff) == ("203.0.113.9", 0)
    assert forwarded_client(s, ("10.20.30.40", 1), xff) == ("203.0.113.9", 0)
    assert forwarded_client(s, ("::ffff:10.20.30.40", 1, 0, 0), xff) == ("203.0.113.9", 0)
    assert forwarded_client(s, ("192.0.2.2", 1), xff) is None
    assert forwarded_client(s, None, xff) is None
    assert forwarded_client(Settings(), PROXY, xff) is None  # the default trusts nobody
    assert trusted_proxy(s, "10.1.1.1") and not trusted_proxy(s, "11.1.1.1")
    assert not trusted_proxy(Settings(), "127.0.0.1")


def test_unusable_values_are_logged_once_per_period(caplog):
    caplog.set_level(logging.WARNING, logger="hubbub.forwarded")
    s = Settings(forwarded_allow_ips="127.0.0.2")
    px = Proxies("127.0.0.2")
    now = [0.0]
    px.clock = lambda: now[0]
    bad = BadForwarded("'garbage' is not an address")
    assert px.report("127.0.0.2", bad)
    assert not any(px.report("127.0.0.2", bad) for _ in range(100))
    now[0] += 61
    assert px.report("127.0.0.2", bad)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "(100 more since the last report)" in lines[1]
    assert "'garbage' is not an address" in lines[0] and "127.0.0.2" in lines[0]
    # Through the settings: the peer stays the client.
    assert forwarded_client(s, ("127.0.0.2", 1), {"x-forwarded-for": "garbage"}) is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"forwarded_allow_ips": "*"}, "would let every client choose its address"),
        ({"forwarded_allow_ips": "proxy.local"}, "not an IP address or network"),
        ({"forwarded_header": "x-real-ip"}, "must be one of x-forwarded-for, forwarded"),
    ],
)
def test_bad_settings_are_refused(changes, words):
    with pytest.raises(SettingError) as info:
        Settings(**changes)
    assert info.value.field == next(iter(changes)) and words in str(info.value)


# -- real sockets ------------------------------------------------------------------------


def request(path: str, xff: str | None, *, close: bool = True, extra: str = "") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if xff is not None:
        head += f"X-Forwarded-For: {xff}\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + extra + "\r\n").encode()


def echo_remote(server):
    def on_request(req, resp):
        resp.end(json.dumps(list(req.remote)))

    server.on("request", on_request)


async def remote_seen(server, xff: str | None) -> list:
    reader, writer = await open_conn(server)
    try:
        writer.write(request("/who", xff))
        return json.loads((await read_reply(reader)).body)
    finally:
        writer.close()


async def test_a_trusted_proxy_names_the_client(make_server, caplog):
    caplog.set_level(logging.INFO, logger="hubbub.access")
    server = await make_server(echo_remote, forwarded_allow_ips="127.0.0.1")
    assert await remote_seen(server, "6.6.6.6, 203.0.113.9") == ["203.0.113.9", 0]
    peer = await remote_seen(server, None)  # no header: the proxy itself
    assert peer[0] == "127.0.0.1" and peer[1] > 0
    lines = [r.getMessage() for r in caplog.records if r.name == "hubbub.access"]
    assert lines[0].startswith('203.0.113.9:0 "GET /who" 200')
    assert lines[1].startswith("127.0.0.1:")


async def test_the_header_of_an_untrusted_peer_is_ignored(make_server):
    server = await make_server(echo_remote, forwarded_allow_ips="192.0.2.1")
    assert (await remote_seen(server, "203.0.113.9"))[0] == "127.0.0.1"
    server2 = await make_server(echo_remote)  # the default: no proxy trusted
    assert (await remote_seen(server2, "203.0.113.9"))[0] == "127.0.0.1"


async def test_a_bad_value_leaves_the_proxy_address_and_is_logged(make_server, caplog):
    caplog.set_level(logging.WARNING, logger="hubbub.forwarded")
    server = await make_server(echo_remote, forwarded_allow_ips="127.0.0.3/32, 127.0.0.1")
    for _ in range(3):
        assert (await remote_seen(server, "203.0.113.9, garbage"))[0] == "127.0.0.1"
    logged = [r.getMessage() for r in caplog.records if r.name == "hubbub.forwarded"]
    assert len(logged) == 1  # once a minute at most (this setting is used here only)
    assert "'garbage' is not an address" in logged[0]


async def test_keep_alive_connections_of_a_proxy_carry_several_clients(make_server):
    server = await make_server(echo_remote, forwarded_allow_ips="127.0.0.1")
    ep = server._endpoint
    reader, writer = await open_conn(server)
    try:
        for client in ("203.0.113.9", "203.0.113.10", "203.0.113.9"):
            writer.write(request("/who", client, close=False))
            assert json.loads((await read_reply(reader)).body)[0] == client
            assert ep.per_ip.counts == {client: 1}
    finally:
        writer.close()
    await _until(lambda: ep.per_ip.total == 0)
    assert ep.per_ip.counts == {}


async def test_the_per_address_limit_applies_to_the_forwarded_client(make_chat):
    server = await make_chat(
        forwarded_allow_ips="127.0.0.1", max_connections_per_ip=2, unlimited_addresses=""
    )
    ep = server._endpoint
    # The proxy's own connections are not limited by its address...
    idle = [await open_conn(server) for _ in range(4)]
    await _until(lambda: ep.pending.total == 4)
    url = f"ws://127.0.0.1:{server.port}/"
    a = {"X-Forwarded-For": "203.0.113.9"}
    async with connect(url, additional_headers=a), connect(url, additional_headers=a):
        # ...the client's are: a third WebSocket from 203.0.113.9 gets 503.
        reader, writer = await open_conn(server)
        writer.write(upgrade(None, "127.0.0.1")[:-2] + b"X-Forwarded-For: 203.0.113.9\r\n\r\n")
        reply = await read_reply(reader)
        writer.close()
        assert reply.status == 503 and b"Too many connections from your address" in reply.body
        assert reply.headers["retry-after"] == "5"
        async with connect(url, additional_headers={"X-Forwarded-For": "203.0.113.10"}):
            assert ep.per_ip.get("203.0.113.9") == 2 and ep.per_ip.get("203.0.113.10") == 1
            seen = sorted(server.connection_info(fd)["remote_ip"] for fd in ep.all)
            assert seen == ["203.0.113.10", "203.0.113.9", "203.0.113.9"]
    for _, w in idle:
        w.close()
    await _until(lambda: ep.per_ip.total == 0 and not ep.all)


async def test_sessions_are_counted_against_the_forwarded_client(make_chat):
    server = await make_chat(forwarded_allow_ips="127.0.0.1")
    reader, writer = await open_conn(server)
    try:
        writer.write(
            b"POST /v1/sessions?transport=poll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"X-Forwarded-For: 203.0.113.9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        reply = await read_reply(reader)
    finally:
        writer.close()
    assert reply.status == 201
    ep = server._endpoint
    (session,) = ep.sessions.values()
    assert server.connection_info(session.fd)["remote_ip"] == "203.0.113.9"
    await _until(lambda: ep.per_ip.counts == {"203.0.113.9": 1})


async def _upgrade_status(server, origin: str, extra: str) -> int:
    reader, writer = await open_conn(server)
    try:
        head = upgrade(origin, "chat.example.com").decode()
        writer.write((head[:-2] + extra + "\r\n").encode())
        return (await read_reply(reader, head_only=True)).status
    finally:
        writer.close()


async def test_a_trusted_proxy_says_the_browser_used_https(make_chat, tmp_path):
    """Behind a proxy that ends TLS, a page of https://chat.example.com is the server's
    own origin when the (trusted) proxy says so with X-Forwarded-Proto or Forwarded."""
    page = "https://chat.example.com"
    xfp = "X-Forwarded-Proto: https\r\n"
    server = await make_chat(forwarded_allow_ips="127.0.0.1", allowed_hosts="chat.example.com")
    assert await _upgrade_status(server, page, xfp) == 101
    assert await _upgrade_status(server, page, "") == 403  # the proxy said nothing
    assert await _upgrade_status(server, page, "X-Forwarded-Proto: http\r\n") == 403
    assert await _upgrade_status(server, "http://chat.example.com", xfp) == 403
    # The last value a proxy appended counts, not what the client sent first.
    assert await _upgrade_status(server, page, "X-Forwarded-Proto: http, https\r\n") == 101
    rfc = await make_chat(
        db=str(tmp_path / "rfc.db"),
        forwarded_allow_ips="127.0.0.1",
        forwarded_header="forwarded",
        allowed_hosts="chat.example.com",
    )
    fwd = 'Forwarded: for=192.0.2.1;proto=http, for="198.51.100.7";proto=https\r\n'
    assert await _upgrade_status(rfc, page, fwd) == 101
    # From a peer that is not a trusted proxy the header is never read.
    untrusted = await make_chat(
        db=str(tmp_path / "untrusted.db"),
        forwarded_allow_ips="192.0.2.1",
        allowed_hosts="chat.example.com",
    )
    assert await _upgrade_status(untrusted, page, xfp) == 403
