"""The browser client on every transport: WebSocket, and the fallbacks of
docs/transports.md (server-sent events, long polling) for networks that block
WebSocket; over wss://; and across a server restart."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import trustme

from ..conftest import free_port, serve_args
from .conftest import NO_STREAMS, NO_WEBSOCKET, ChatPage, V1Client, stored_texts

pytestmark = pytest.mark.timeout(60)

#: What takes the other transports away, per transport the page must end up on.
FORCE = {"websocket": None, "sse": NO_WEBSOCKET, "poll": NO_STREAMS}
SHOWN = {"websocket": "via WebSocket", "sse": "via server-sent events", "poll": "via long polling"}


def page_url(port: int, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}/"


async def on_transport(who: ChatPage, kind: str) -> None:
    assert await who.transport() == kind
    assert await who.page.text_content("#conn-via") == SHOWN[kind]


@pytest.mark.parametrize("kind", ["sse", "poll"])
async def test_a_page_without_websocket_chats_with_a_websocket_page(make_chat, open_page, kind):
    server = await make_chat(rate=0)
    url = page_url(server.port)
    ann = await open_page(url, "ann")
    bob = await open_page(url, "bob", init_script=FORCE[kind])
    await on_transport(ann, "websocket")
    await on_transport(bob, kind)
    assert await bob.page.evaluate("typeof window.WebSocket") == "undefined"
    # Members of one room whatever carries them.
    await ann.wait_for(
        lambda: ann.page.locator("#member-list .member-name").all_text_contents(), ["ann", "bob"]
    )
    # Both talk at once: both see every message, in the same order (the server's).
    expected = []
    for i in range(4):
        await ann.send(f"ann {i}")
        await bob.send(f"bob {i}")
        expected += [f"ann {i}", f"bob {i}"]
    for who in (ann, bob):
        await who.wait_for(lambda who=who: who.count(), len(expected))
        assert await who.pending() == []
    order = await ann.texts()
    assert sorted(order) == sorted(expected)
    assert await bob.texts() == order
    assert await bob.seqs() == await ann.seqs() == list(range(1, len(expected) + 1))
    # Each message typed on bob's page went out in the order typed, once.
    assert [t for t in order if t.startswith("bob")] == [f"bob {i}" for i in range(4)]
    assert await stored_texts(server.port, "lobby") == order
    # Typing indicators, presence and history ride the fallback too.
    await bob.page.locator("#input").click()
    await bob.page.keyboard.insert_text("typing…")
    await ann.page.get_by_text("bob is typing…").wait_for()
    await bob.page.reload()
    await bob.wait_state("connected")
    await bob.wait_texts(order)
    assert await bob.transport() == kind


async def test_a_websocket_that_keeps_failing_falls_back_to_sse(make_chat, open_page):
    server = await make_chat()
    url = page_url(server.port)
    refused: list[Any] = []

    async def blocked(ws: Any) -> None:  # a proxy that kills every WebSocket before a frame
        refused.append(ws)
        await ws.close(code=1011)

    bob = await open_page(url, "bob", route=blocked, wait=False)
    await bob.wait_state("connected", within=20)
    await on_transport(bob, "sse")
    # The rule: two WebSocket failures, while the server answers plain HTTP.
    assert len(refused) == 2
    ann = await open_page(url, "ann")
    await bob.send("through the proxy")
    await ann.wait_texts(["through the proxy"])
    await bob.wait_texts(["through the proxy"])
    # The transport that worked is kept: a dropped session resumes on SSE, and
    # the blocked WebSocket is not tried again.
    first = await bob.page.evaluate("hubbub.link.id")
    await bob.page.evaluate("hubbub.link._gone(1006)")
    await bob.wait_for(
        lambda: bob.page.evaluate("old => hubbub.welcomed && hubbub.link.id !== old", first),
        True,
        within=20,
    )
    assert await bob.transport() == "sse"
    assert len(refused) == 2
    await ann.send("after the drop")
    await bob.wait_texts(["through the proxy", "after the drop"])


async def test_a_restart_resumes_every_transport_exactly_once(spawn, tmp_path, open_page):
    port = free_port()
    args = serve_args(port, "--db", str(tmp_path / "restart.db"), "--rate", "0")
    proc = spawn(*args, port=port)
    url = page_url(port)
    pages = {kind: await open_page(url, f"on-{kind}", init_script=FORCE[kind]) for kind in FORCE}
    for kind, who in pages.items():
        await on_transport(who, kind)
    expected = []
    for kind, who in pages.items():
        await who.send(f"{kind} before")
        expected.append(f"{kind} before")
        for other in pages.values():
            await other.wait_texts(expected)

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    for who in pages.values():
        await who.wait_for(lambda who=who: who.state(), "reconnecting", within=15)
    # Typed while the server is down: queued, sent once after the resume.
    for kind, who in pages.items():
        await who.send(f"{kind} while down")
        assert await who.pending() == [f"{kind} while down"]

    proc = spawn(*args, port=port)
    carol = await V1Client.open(f"ws://127.0.0.1:{port}/", "carol", "lobby")
    await carol.say("lobby", "carol after the restart")
    for who in pages.values():
        await who.wait_state("connected", within=30)
    for kind, who in pages.items():
        # A restart is not a blocked WebSocket: every page is back on its own transport.
        assert await who.transport() == kind
    stored = await _wait_stored(port, len(expected) + 4)
    assert stored[: len(expected)] == expected
    assert sorted(stored[len(expected) :]) == sorted(
        [f"{k} while down" for k in FORCE] + ["carol after the restart"]
    )
    for who in pages.values():
        await who.wait_texts(stored, within=15)
        assert await who.seqs() == list(range(1, len(stored) + 1))
        assert await who.pending() == []
    await carol.close()


async def _wait_stored(port: int, n: int) -> list[str]:
    for _ in range(200):
        stored = await stored_texts(port, "lobby")
        if len(stored) >= n:
            return stored
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server stored {stored!r}, expected {n} messages")


@pytest.fixture
def tls_files(tmp_path) -> tuple[str, str]:
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    return str(certfile), str(keyfile)


@pytest.mark.parametrize("kind", ["websocket", "sse"])
async def test_the_page_chats_over_tls(make_chat, open_page, tls_files, kind):
    certfile, keyfile = tls_files
    server = await make_chat(certfile=certfile, keyfile=keyfile)
    url = page_url(server.port, "https")
    ann = await open_page(url, "ann", ignore_https_errors=True)
    bob = await open_page(url, "bob", ignore_https_errors=True, init_script=FORCE[kind])
    await on_transport(bob, kind)
    if kind == "websocket":
        assert (await bob.page.evaluate("hubbub.ws.url")).startswith("wss://127.0.0.1:")
    assert await bob.page.evaluate("location.protocol") == "https:"
    await ann.send("over TLS")
    await bob.send("encrypted both ways")
    await ann.wait_texts(["over TLS", "encrypted both ways"])
    await bob.wait_texts(["over TLS", "encrypted both ways"])
