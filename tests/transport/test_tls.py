"""HTTPS and WSS on the same port (--certfile / --keyfile), with a certificate
made at test time by trustme."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

import pytest
import trustme
from websockets.asyncio.client import connect

from hubbub import Server
from hubbub.errors import StartupError

from ..conftest import recv_all
from .test_http import read_reply


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca, tmp_path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    return str(certfile), str(keyfile)


@pytest.fixture
def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_https_get_and_access_log(make_chat, tls_files, client_ctx, caplog):
    caplog.set_level(logging.INFO)
    certfile, keyfile = tls_files
    server = await make_chat(certfile=certfile, keyfile=keyfile)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=client_ctx, server_hostname="127.0.0.1"
    )
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.status == 200 and reply.body == b"ok\n"
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    writer.write(b"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.status == 200 and "rooms" in json.loads(reply.body)
    assert reply.headers["x-content-type-options"] == "nosniff"
    writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "hubbub.access"]
    assert any('"GET /healthz" 200' in line for line in lines)


async def test_plain_http_to_a_tls_port_is_refused_quietly(make_chat, tls_files):
    certfile, keyfile = tls_files
    server = await make_chat(certfile=certfile, keyfile=keyfile)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5.0)
    assert b"HTTP/1.1 200" not in data
    writer.close()


async def test_wss_seed_chat_and_origin_rule(make_chat, tls_files, client_ctx):
    certfile, keyfile = tls_files
    server = await make_chat(certfile=certfile, keyfile=keyfile)
    url = f"wss://127.0.0.1:{server.port}/"
    own = f"https://127.0.0.1:{server.port}"
    async with connect(url, ssl=client_ctx, origin=own) as a, connect(url, ssl=client_ctx) as b:
        assert await recv_all(a, 1) == ["Hello, welcome\n"]
        assert await recv_all(b, 1) == ["Hello, welcome\n"]
        await a.send("over tls")
        assert await recv_all(a, 2) == ["from 1: over tls", "server: over tls"]
        assert await recv_all(b, 1) == ["from 1: over tls"]
    # Over TLS the page's origin is https://: http:// of the same host is foreign.
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with connect(url, ssl=client_ctx, origin=f"http://127.0.0.1:{server.port}"):
            pass
    assert info.value.response.status_code == 403


async def test_wss_hubbub_v1(make_chat, tls_files, client_ctx):
    certfile, keyfile = tls_files
    server = await make_chat(certfile=certfile, keyfile=keyfile)
    url = f"wss://127.0.0.1:{server.port}/"
    async with connect(url, ssl=client_ctx, subprotocols=["hubbub.v1"]) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome"
        await ws.send(json.dumps({"type": "join", "room": "lobby", "nick": "ann"}))
        room = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert room["type"] == "room" and room["nick"] == "ann"
        await ws.send(json.dumps({"type": "send", "room": "lobby", "id": "c-1", "text": "hi"}))
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
        assert {f["type"] for f in frames} == {"message", "ack"}


async def test_listening_line_says_https(tls_files, caplog):
    caplog.set_level(logging.INFO, logger="hubbub")
    certfile, keyfile = tls_files
    server = Server("127.0.0.1", 0, certfile=certfile, keyfile=keyfile)
    await server.listen()
    try:
        assert f"listening on https://127.0.0.1:{server.port}/" in caplog.text
    finally:
        await server.shutdown()


async def test_unreadable_or_mismatched_files_are_one_line_startup_errors(
    ca, tls_files, tmp_path
):
    certfile, keyfile = tls_files
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (str(tmp_path / "missing.pem"), keyfile, "no such file"),
        (certfile, str(other_key), "not a usable PEM certificate and its private key"),
        (str(garbage), keyfile, "not a usable PEM certificate"),
    ]
    for cert, key, expected in cases:
        server = Server("127.0.0.1", 0, certfile=cert, keyfile=key)
        with pytest.raises(StartupError) as info:
            await server.listen()
        assert expected in str(info.value)
        assert "\n" not in str(info.value)
