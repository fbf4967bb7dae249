"""``--allowed-hosts``: the Host check against DNS rebinding. Unit tests of
transport.hosts, then over real sockets.

The socket tests need the transport's call of ``http_request_head`` (the http.py and
endpoint.py diffs of H7's report); they are skipped until it is there."""

from __future__ import annotations

import pytest

from hubbub.config import SettingError, Settings
from hubbub.transport.hosts import (
    AllowedHosts,
    classify,
    host_name,
    host_refusal,
    is_loopback_name,
    parse_allowed_hosts,
)

from .test_guard import handshake_status, upgrade
from .test_http import exchange, open_conn, read_reply

# -- unit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Chat.Example.COM", "chat.example.com"),
        ("chat.example.com:8443", "chat.example.com"),
        ("chat.example.com.", "chat.example.com"),
        ("chat.example.com:", "chat.example.com"),
        ("127.0.0.1:9502", "127.0.0.1"),
        ("[::1]:9502", "::1"),
        ("[2001:DB8:0::1]", "2001:db8::1"),
        ("test", "test"),
        ("my_host", "my_host"),
    ],
)
def test_host_names(value, name):
    assert host_name(value) == name


@pytest.mark.parametrize(
    "value",
    ["", "a b", "a@b", "a/b", "a, b", "::1", "[::1", "[1.2.3.4]", "a:b", "a:123456", "-a.b", "é.x"],
)
def test_values_that_are_not_hosts(value):
    assert host_name(value) is None
    assert host_refusal({"host": value}, "", lambda: True)[0] == 400


def test_loopback_names():
    for name in ("localhost", "chat.localhost", "127.0.0.1", "127.9.9.9", "::1"):
        assert is_loopback_name(name), name
    for name in ("localhost.example", "10.0.0.1", "test", "::2"):
        assert not is_loopback_name(name), name


def test_the_list_is_parsed_and_matched():
    allowed = parse_allowed_hosts("chat.example.com, .example.org [2001:db8::1] 192.0.2.1")
    assert allowed == AllowedHosts(
        False, frozenset({"chat.example.com", "2001:db8::1", "192.0.2.1"}), (".example.org",)
    )
    for name in ("chat.example.com", "example.org", "a.b.example.org", "2001:db8::1"):
        assert allowed.allows(name), name
    for name in ("example.com", "badexample.org", "x.chat.example.com", "192.0.2.2"):
        assert not allowed.allows(name), name
    assert parse_allowed_hosts("*").allows("anything.example")
    assert not parse_allowed_hosts("")


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("chat.example.com:443", "without a port"),
        ("a/b", "not a host name"),
        (".", "not a domain"),
        (".192.0.2.1", "not a domain"),
    ],
)
def test_bad_lists_are_refused_at_start(setting, words):
    with pytest.raises(SettingError) as info:
        Settings(allowed_hosts=setting)
    assert info.value.field == "allowed_hosts" and words in str(info.value)


def test_with_no_list_a_loopback_connection_refuses_dns_names():
    loopback, public = (lambda: True), (lambda: False)
    status, reason = host_refusal({"host": "evil.example:9502"}, "", loopback)
    assert status == 421 and "'evil.example:9502'" in reason and "--allowed-hosts" in reason
    for host in (
        "127.0.0.1:9502",
        "localhost:9502",
        "app.localhost",
        "[::1]:1",
        "test",
        "10.0.0.5",
    ):
        assert host_refusal({"host": host}, "", loopback) is None, host
    assert host_refusal({}, "", loopback) is None  # no Host (HTTP/1.0): nothing to rebind
    # Reached on another address, or from a trusted proxy: every name.
    assert host_refusal({"host": "chat.example.com"}, "", public) is None
    assert host_refusal({"host": "chat.example.com"}, "", loopback, via_proxy=True) is None


def test_the_local_address_is_looked_up_only_when_it_matters():
    calls = []

    def local() -> bool:
        calls.append(1)
        return True

    for host in ("127.0.0.1", "localhost", "test", "192.0.2.1"):
        assert host_refusal({"host": host}, "", local) is None
    assert host_refusal({"host": "chat.example.com"}, "chat.example.com", local) is None
    assert calls == []
    assert host_refusal({"host": "evil.example"}, "", local) is not None
    assert calls == [1]


def test_with_a_list_only_its_names_and_loopback_are_served():
    setting = "chat.example.com .example.org"
    for anywhere in (lambda: True, lambda: False):
        answered = ("chat.example.com", "CHAT.example.com:443", "x.example.org", "localhost")
        # Addresses too: no DNS, nothing to rebind (a Kubernetes probe says the pod's).
        for host in (*answered, "192.0.2.1:9502", "[2001:db8::1]"):
            assert host_refusal({"host": host}, setting, anywhere) is None, host
        for host in ("evil.example", "test", "chat.example.com.evil.example"):
            status, reason = host_refusal({"host": host}, setting, anywhere)
            assert status == 421 and "is not served here (see --allowed-hosts)" in reason
        # A proxy does not lift the list.
        assert host_refusal({"host": "evil.example"}, setting, anywhere, True)[0] == 421


def test_classification_is_cached_and_bounded():
    classify.cache_clear()
    for i in range(3000):
        host_refusal({"host": f"h{i}.example"}, "", lambda: False)
    info = classify.cache_info()
    assert info.currsize <= info.maxsize == 1024


# -- real sockets --------------------------------------------------------------------------


def get_host(host: str, path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()


async def test_a_rebound_name_is_refused_on_loopback(make_chat):
    server = await make_chat()
    port = server.port
    # The attack: a page of evil.example, its name re-pointed at 127.0.0.1, opens a
    # WebSocket: Host and Origin agree, so the Origin check alone lets it in.
    evil = upgrade(f"http://evil.example:{port}", f"evil.example:{port}")
    reply, _ = await exchange(server, evil)
    assert reply.status == 421 and reply.reason == "Misdirected Request"
    assert b"'evil.example:" in reply.body and b"--allowed-hosts" in reply.body
    assert server._endpoint.all == {}
    reply, _ = await exchange(server, get_host(f"evil.example:{port}", "/api/rooms"))
    assert reply.status == 421  # reading, too
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "test"):
        reply, _ = await exchange(server, get_host(host))
        assert reply.status == 200, host
    assert await handshake_status(server, f"http://localhost:{port}", f"localhost:{port}") == 101


async def test_the_list_is_checked_before_any_handler(make_server):
    calls = []

    def on_request(req, resp):
        calls.append(req.headers.get("host"))
        resp.end("ok")

    server = await make_server(lambda s: s.on("request", on_request), allowed_hosts="chat.example")
    for host, status in (
        ("chat.example", 200),
        ("chat.example:9502", 200),
        ("localhost", 200),  # health checks (HAProxy's says Host: localhost)
        ("192.0.2.7:9502", 200),  # an address: nothing to rebind
        ("other.example", 421),
        ("test", 421),
        ("a b", 400),
        ("x@chat.example", 400),
    ):
        reply, _ = await exchange(server, get_host(host, "/page"))
        assert reply.status == status, host
    assert calls == ["chat.example", "chat.example:9502", "localhost", "192.0.2.7:9502"]


async def test_a_refused_request_closes_its_connection(make_server):
    server = await make_server(allowed_hosts="chat.example")
    reader, writer = await open_conn(server)
    try:
        writer.write(get_host("evil.example").replace(b"Connection: close\r\n", b""))
        reply = await read_reply(reader)
        assert reply.status == 421 and reply.headers["connection"] == "close"
        assert await reader.read() == b""
    finally:
        writer.close()


async def test_behind_a_trusted_proxy_the_proxy_decides_without_a_list(make_server):
    server = await make_server(forwarded_allow_ips="127.0.0.1")
    reply, _ = await exchange(
        server, get_host("chat.example.com", extra="X-Forwarded-For: 1.2.3.4\r\n")
    )
    assert reply.status == 200
    server2 = await make_server(forwarded_allow_ips="127.0.0.1", allowed_hosts="chat.example.com")
    reply, _ = await exchange(server2, get_host("evil.example"))
    assert reply.status == 421
