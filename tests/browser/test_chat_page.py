"""The chat page (/, static/index.html + app.js) in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest

from ..conftest import free_port, serve_args
from .conftest import PHONE, ChatPage, V1Client, settled

pytestmark = pytest.mark.timeout(45)

INJECTION = "<img src=x onerror=alert(1)>"


def page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def disconnected(who: ChatPage) -> Any:
    async def probe() -> bool:
        return await who.state() != "connected"

    return probe


async def test_two_people_chat_and_a_late_joiner_sees_the_history(make_chat, open_page):
    server = await make_chat()
    url = page_url(server.port)

    # A first visit asks for a nickname, and remembers it.
    ann = await open_page(url, None)
    dialog = ann.page.locator("#nick-dialog")
    await dialog.wait_for(state="visible")
    await ann.page.fill("#nick-input", "has space")
    await ann.page.press("#nick-input", "Enter")
    assert "letters" in (await ann.page.text_content("#nick-error") or "")
    await ann.page.fill("#nick-input", "ann")
    await ann.page.press("#nick-input", "Enter")
    await ann.wait_state("connected")
    assert await ann.page.evaluate("localStorage.getItem('hubbub.nick')") == "ann"

    bob = await open_page(url, "bob")
    await ann.wait_for(
        lambda: ann.page.locator("#member-list .member-name").all_text_contents(),
        ["ann", "bob"],
    )
    # bob types: ann sees it; then he sends with Enter, a newline with Shift+Enter.
    await bob.page.locator("#input").click()
    await bob.page.keyboard.insert_text("hel")
    await ann.page.get_by_text("bob is typing…").wait_for()
    await bob.page.fill("#input", "")
    await ann.send("hello bob")
    await bob.send("hi ann\nsecond line")
    expected = ["hello bob", "hi ann\nsecond line"]
    await ann.wait_texts(expected)
    await bob.wait_texts(expected)
    assert await ann.pending() == [] and await bob.pending() == []
    # Screen readers hear new messages from others (an aria-live region).
    assert await bob.page.get_attribute("#announcer", "aria-live") == "polite"
    assert "ann: hello bob" in (await bob.page.text_content("#announcer") or "")
    assert await ann.page.locator(".msg-list .msg").first.locator(".author").text_content() == (
        "ann"
    )
    assert await ann.page.locator(".msg-list .day").all_text_contents() == ["Today"]
    assert await bob.seqs() == [1, 2]

    # cat comes later and finds the conversation, once.
    cat = await open_page(url, "cat")
    await cat.wait_texts(expected)
    assert await cat.seqs() == [1, 2]

    # A direct message: cat clicks bob in the member list.
    await cat.page.get_by_role("button", name="bob (direct message)").click()
    assert await cat.page.text_content("#conv-name") == "bob"
    await cat.send("psst, bob")
    await cat.wait_texts(["psst, bob"])
    dm_item = bob.page.locator("#dm-list .side-item")
    await dm_item.get_by_text("cat").wait_for()
    assert "1" in (await dm_item.locator(".badge").text_content() or "")
    await dm_item.click()
    await bob.wait_texts(["psst, bob"])
    assert await bob.page.locator(".view:not([hidden]) .msg.dm").count() == 1
    # ann never gets it: once she sees dan join (after the DM went out), a DM to
    # her would already have arrived (the server writes to a socket in order).
    dan = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "dan", "lobby")
    await ann.page.locator("#member-list").get_by_text("dan").wait_for()
    assert await ann.page.locator("#dm-list .side-item").count() == 0
    await dan.close()
    assert await ann.texts() == expected

    # A reload remembers the nickname and shows the history again.
    await ann.page.reload()
    await ann.wait_state("connected")
    assert not await dialog.is_visible()
    await ann.wait_texts(expected)
    assert await ann.page.text_content("#me-nick") == "ann"


async def test_user_text_is_shown_as_text_and_only_http_links_are_links(make_chat, open_page):
    server = await make_chat()
    url = page_url(server.port)
    ann = await open_page(url, "ann")
    bob = await open_page(url, "bob")
    long_word = "x" * 400
    texts = [
        INJECTION,
        "<b>bold?</b> <script>alert(2)</script> javascript:alert(3)",
        "see https://example.com/a_(b) and http://example.org/x?y=1&z=2.",
        long_word,
    ]
    for text in texts:
        await ann.send(text)
    await bob.wait_texts(texts)
    await ann.wait_texts(texts)
    for who in (ann, bob):
        page = who.page
        assert await page.locator(".views img, .views b, .views script").count() == 0
        links = await page.eval_on_selector_all(
            ".views .msg-text a",
            "els => els.map(a => [a.getAttribute('href'), a.rel, a.target, a.textContent])",
        )
        assert links == [
            ["https://example.com/a_(b)", "noopener noreferrer nofollow", "_blank",
             "https://example.com/a_(b)"],
            ["http://example.org/x?y=1&z=2", "noopener noreferrer nofollow", "_blank",
             "http://example.org/x?y=1&z=2"],
        ]  # fmt: skip
        # The 400-character word wraps inside the conversation (no sideways scrolling).
        fits = await page.evaluate(
            "() => { const v = document.querySelector('.view:not([hidden])');"
            " return v.scrollWidth <= v.clientWidth; }"
        )
        assert fits
        # No element that could load anything, so no handler can ever fire.
        handlers = "() => document.querySelectorAll('.views [onerror], .views img').length"
        assert await page.evaluate(handlers) == 0
    assert ann.dialogs == [] and bob.dialogs == []


async def test_scrolling_to_the_top_loads_older_pages_and_keeps_the_position(make_chat, open_page):
    server = await make_chat(rate=0)
    poster = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "poster", "lobby")
    every = [f"message {i:03d}" for i in range(1, 131)]
    for text in every:
        await poster.put(type="send", room="lobby", id=text, text=text)
    await poster.until("ack", id=every[-1], within=10)

    ann = await open_page(page_url(server.port), "ann")
    await ann.wait_texts(every[-50:])  # the latest page, scrolled to the bottom
    view = ann.page.locator(".view:not([hidden])")
    assert await view.evaluate("v => v.scrollHeight - v.scrollTop - v.clientHeight < 2")

    loading = ann.page.locator(".view:not([hidden]) .history-top").get_by_text("Loading messages")
    for shown in (100, 130):
        first_seq = await ann.page.locator(".msg-list .msg").first.get_attribute("data-seq")
        # The text of the oldest message shown (its header may go: grouped with the
        # older messages of the same author, the message shows no name line any more).
        anchor = ann.page.locator(f'.msg-list .msg[data-seq="{first_seq}"] .msg-text')
        # Scroll to the top and read where it is in the same task, before the page
        # reacts (a "loading" row, the older page, a day separator): nothing the page
        # does afterwards may move what the reader is looking at.
        before = await view.evaluate(
            """(v, seq) => { v.scrollTop = 0; return v.querySelector(
                 `.msg[data-seq="${seq}"] .msg-text`).getBoundingClientRect().top; }""",
            first_seq,
        )
        await ann.wait_texts(every[-shown:])
        await loading.wait_for(state="detached")
        await settled(ann.page)
        after = await anchor.evaluate("e => e.getBoundingClientRect().top")
        assert abs(after - before) < 2, (before, after)  # what was read stays in place
    await ann.page.get_by_text("This is the very beginning of #lobby.").wait_for()
    assert await ann.seqs() == list(range(1, 131))
    await poster.close()


async def test_pages_resume_across_a_server_restart_without_loss_or_duplicates(
    spawn, tmp_path, open_page
):
    port = free_port()
    db = tmp_path / "restart.db"
    args = serve_args(port, "--db", str(db))
    proc = spawn(*args, port=port)
    url = page_url(port)
    ann = await open_page(url, "ann")
    bob = await open_page(url, "bob")
    await ann.send("before the restart")
    await bob.wait_texts(["before the restart"])

    # bob's network goes away; then the server stops (SIGTERM: a graceful shutdown).
    await bob.context.set_offline(True)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    await ann.wait_for(disconnected(ann), True, within=10)
    assert await ann.page.locator("#banner").is_visible()

    # ann writes while the server is down: the message waits, shown as pending.
    await ann.send("typed while the server was down")
    assert await ann.pending() == ["typed while the server was down"]
    assert await ann.texts() == ["before the restart"]
    assert "Waiting for connection" in (await ann.page.text_content(".pending-tail") or "")

    proc = spawn(*args, port=port)
    await ann.wait_state("connected", within=20)
    expected = ["before the restart", "typed while the server was down"]
    await ann.wait_texts(expected)
    assert await ann.pending() == []

    # While bob is still cut off, others go on talking.
    carol = await V1Client.open(f"ws://127.0.0.1:{port}/", "carol", "lobby")
    for i in range(1, 4):
        await carol.say("lobby", f"meanwhile {i}")
    await ann.send("ann meanwhile")
    expected += ["meanwhile 1", "meanwhile 2", "meanwhile 3", "ann meanwhile"]
    await ann.wait_texts(expected)
    assert await bob.state() in ("offline", "reconnecting", "connecting")

    # bob's network is back: he resumes where he was, missing nothing, doubling nothing.
    await bob.context.set_offline(False)
    await bob.wait_state("connected", within=20)
    await bob.wait_texts(expected)
    await carol.say("lobby", "after everyone is back")
    expected.append("after everyone is back")
    for who in (ann, bob):
        await who.wait_texts(expected)
        assert await who.seqs() == list(range(1, len(expected) + 1))
    # The server stored the queued message exactly once.
    await carol.put(type="history", room="lobby", limit=200)
    page = await carol.until("history")
    assert [m["text"] for m in page["messages"]] == expected
    await carol.close()


async def test_a_resend_after_a_lost_ack_is_shown_once(make_chat, open_page):
    # max_resume=2: missing more than two messages makes the rejoin a "reset",
    # so the page resends its unacknowledged message before it sees it again.
    server = await make_chat(max_resume=2, rate=0)
    url = page_url(server.port)
    to_page: list[dict[str, Any]] = []
    to_server: list[dict[str, Any]] = []
    routes: list[tuple[Any, Any]] = []
    cut = asyncio.Event()

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()
        routes.append((ws, server_ws))

        def down(message: str | bytes) -> None:
            if not cut.is_set():
                to_page.append(json.loads(message))
                ws.send(message)

        def up(message: str | bytes) -> None:
            to_server.append(json.loads(message))
            server_ws.send(message)

        server_ws.on_message(down)
        ws.on_message(up)

    ann = await open_page(url, "ann", route=route)
    bob = await open_page(url, "bob")
    await bob.send("one")
    await ann.wait_texts(["one"])

    # The server stores ann's message, but its echo and ack never reach her page.
    cut.set()
    await ann.send("lost ack")
    await bob.wait_texts(["one", "lost ack"])
    assert await ann.pending() == ["lost ack"]
    for text in ("two", "three", "four"):
        await bob.send(text)
    await bob.wait_texts(["one", "lost ack", "two", "three", "four"])
    # Then the connection dies; the page reconnects (a new routed socket).
    page_ws, server_ws = routes[-1]
    cut.clear()
    await server_ws.close()
    await page_ws.close(code=4100, reason="test: connection lost")

    async def sockets() -> int:
        return len(routes)

    await ann.wait_for(sockets, 2, within=10)
    await ann.wait_state("connected")
    await ann.wait_texts(["one", "lost ack", "two", "three", "four"])
    assert await ann.pending() == []
    assert await ann.seqs() == [1, 2, 3, 4, 5]

    sends = [f for f in to_server if f["type"] == "send"]
    assert len(sends) == 2 and sends[0]["id"] == sends[1]["id"]  # resent with its id
    joins = [f for f in to_server if f["type"] == "join"]
    assert joins[-1]["since"] == 1 and joins[-1]["epoch"]
    assert [f["reason"] for f in to_page if f["type"] == "reset"] == ["too_far"]
    acks = [f for f in to_page if f["type"] == "ack"]
    assert [(a["seq"], a["duplicate"]) for a in acks] == [(2, True)]


async def test_screenshots_at_desktop_and_phone_width(make_chat, open_page, shots):
    server = await make_chat(rate=0)
    url = page_url(server.port)
    ws_url = f"ws://127.0.0.1:{server.port}/"
    maya = await V1Client.open(ws_url, "maya", "lobby", "design")
    leo = await V1Client.open(ws_url, "leo", "lobby", "random")
    priya = await V1Client.open(ws_url, "priya", "lobby", "releases")
    await maya.say("lobby", "Morning all! Standup notes are in the usual doc.")
    await leo.say("lobby", "Thanks Maya. The staging deploy finished overnight, no alarms.")
    await leo.say("lobby", "Dashboard: https://status.example.com/staging")
    await priya.say("lobby", "Nice. I'm picking up the reconnect bug today —\nresume after "
                    "a restart should now be gapless.")  # fmt: skip
    await maya.say("design", "New icon set is ready for review")

    desk = await open_page(url, "jordan", rooms=["lobby", "design"])
    await desk.wait_for(desk.count, 4)
    await desk.send("Great news! I'll test it on my phone over lunch.")
    await maya.say("lobby", "Sounds good — ping me if anything looks off.")
    await maya.put(type="dm", room="lobby", to="jordan", text="Got 5 minutes after lunch?")
    await priya.put(type="typing", room="lobby", active=True)
    await desk.page.get_by_text("priya is typing…").wait_for()
    await desk.page.locator("#browse-list .side-item").first.wait_for()
    await desk.page.locator("#dm-list .side-item").first.wait_for()
    # Desktop: rooms, conversation and members side by side; no menu button.
    assert await desk.page.locator("#sidebar").is_visible()
    assert await desk.page.locator("#member-list").is_visible()
    assert not await desk.page.locator("#menu-btn").is_visible()
    await desk.page.mouse.move(0, 0)
    await desk.page.evaluate("document.activeElement.blur()")
    await desk.page.screenshot(path=str(shots / "chat-desktop.png"))

    phone = await open_page(url, "sam", viewport=PHONE)
    await phone.wait_for(phone.count, 6)
    await priya.put(type="typing", room="lobby", active=True)
    await phone.page.get_by_text("priya is typing…").wait_for()
    # Phone: the room list is a drawer behind the menu button.
    sidebar = phone.page.locator("#sidebar")
    assert not await sidebar.is_visible()
    assert not await phone.page.locator("#member-list").is_visible()
    await phone.page.evaluate("document.activeElement.blur()")
    await phone.page.screenshot(path=str(shots / "chat-phone.png"))
    await phone.page.click("#menu-btn")
    await sidebar.get_by_role("button", name="lobby").wait_for()
    assert await phone.page.get_attribute("#menu-btn", "aria-expanded") == "true"
    await phone.page.keyboard.press("Escape")
    await sidebar.wait_for(state="hidden")
    await phone.page.click("#members-btn")
    await phone.page.locator("#member-list").get_by_text("priya").wait_for()
    for client in (maya, leo, priya):
        await client.close()


async def test_unsent_messages_survive_a_reload_of_the_page(make_chat, open_page):
    server = await make_chat()
    url = page_url(server.port)
    dropping = asyncio.Event()
    dropping.set()

    dropped: list[str] = []

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()

        def up(message: str | bytes) -> None:
            frame = json.loads(message)
            if dropping.is_set() and frame["type"] == "send":
                dropped.append(frame["text"])
            else:
                server_ws.send(message)

        ws.on_message(up)
        server_ws.on_message(ws.send)

    ann = await open_page(url, "ann", route=route)
    bob = await open_page(url, "bob")
    await ann.send("lost in transit")  # the server never gets it

    async def was_dropped() -> list[str]:
        return dropped

    await ann.wait_for(was_dropped, ["lost in transit"])
    assert await ann.pending() == ["lost in transit"]
    assert await bob.texts() == []
    dropping.clear()
    await ann.page.reload()
    await ann.wait_texts(["lost in transit"])
    await bob.wait_texts(["lost in transit"])
    assert await ann.pending() == []
    await ann.page.reload()  # sent now: nothing is left to send again
    await ann.wait_texts(["lost in transit"])
    assert await ann.pending() == []


async def test_a_reconnect_waits_for_its_dead_connection_to_release_the_nickname(
    make_chat, open_page
):
    server = await make_chat()
    url = page_url(server.port)
    routes: list[tuple[Any, Any]] = []

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()
        routes.append((ws, server_ws))
        ws.on_message(server_ws.send)
        server_ws.on_message(ws.send)
        # Closing one side does not close the other: a half-dead connection.
        ws.on_close(lambda code, reason: None)
        server_ws.on_close(lambda code, reason: None)

    ann = await open_page(url, "ann", route=route)
    bob = await open_page(url, "bob")
    await ann.send("first")
    await bob.wait_texts(["first"])
    # ann's page loses its socket, but the server still sees "ann" connected.
    page_ws, ghost = routes[-1]
    await page_ws.close(code=4100, reason="test: network switch")
    await ann.page.get_by_text("Waiting for your previous session in #lobby").wait_for()
    await ann.send("typed while the old session lingers")
    assert await ann.pending() == ["typed while the old session lingers"]
    await bob.send("bob meanwhile")
    await ghost.close()  # the server drops the old connection (its heartbeat would)
    expected = ["first", "bob meanwhile", "typed while the old session lingers"]
    await ann.wait_texts(expected, within=15)
    await bob.wait_texts(expected)
    assert await ann.pending() == []
    assert not await ann.page.locator("#nick-dialog").is_visible()
    assert await ann.page.text_content("#me-nick") == "ann"
