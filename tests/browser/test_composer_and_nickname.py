"""The chat page as a new user meets it (issue 9): the first nickname, the order of
one's own messages under the rate limit, long pastes, reconnect timing, toasts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from .conftest import ChatPage, V1Client, settled, stored_texts, wait_until

pytestmark = pytest.mark.timeout(60)


def page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


async def focused(who: ChatPage) -> str:
    active = "() => document.activeElement?.id || document.activeElement?.tagName"
    return str(await who.page.evaluate(active))


def recorder(frames: list[dict[str, Any]]) -> Any:
    """A pass-through WebSocket route that records what the page sends."""

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()

        def up(message: str | bytes) -> None:
            frames.append(json.loads(message))
            server_ws.send(message)

        ws.on_message(up)
        server_ws.on_message(ws.send)

    return route


async def test_a_first_visit_with_a_taken_nickname_asks_again_and_sends_nothing_meanwhile(
    make_chat, open_page
):
    server = await make_chat()
    url = page_url(server.port)
    await open_page(url, "zoe")
    up: list[dict[str, Any]] = []
    new = await open_page(url, None, route=recorder(up))
    dialog = new.page.locator("#nick-dialog")
    await dialog.wait_for(state="visible")
    await new.page.fill("#nick-input", "Zoe")  # nicknames are unique case-insensitively
    await new.page.press("#nick-input", "Enter")

    # The dialog comes back, says why, has the focus, and cannot be dismissed.
    error = new.page.locator("#nick-error")
    await error.get_by_text("already taken in #lobby").wait_for()
    assert await dialog.is_visible()
    assert await focused(new) == "nick-input"
    assert await new.page.locator("#nick-cancel").is_hidden()
    await new.page.keyboard.press("Escape")
    assert await dialog.is_visible()
    assert "taken" in (await new.page.text_content("#conv-sub") or "")
    # Nothing but the join went out: no message is sent before a join succeeds.
    assert [f["type"] for f in up if f["type"] not in ("rooms", "ping")] == ["join"]

    await new.page.fill("#nick-input", "zoe2")
    await new.page.press("#nick-input", "Enter")
    await dialog.wait_for(state="hidden")
    await new.wait_for(
        lambda: new.page.locator("#member-list .member-name").all_text_contents(), ["zoe", "zoe2"]
    )
    assert await focused(new) == "input"
    await new.send("hi, I am new")
    await new.wait_texts(["hi, I am new"])
    assert await stored_texts(server.port, "lobby") == ["hi, I am new"]
    assert await new.page.evaluate("localStorage.getItem('hubbub.nick')") == "zoe2"


async def test_after_choosing_a_nickname_the_message_box_has_the_focus(make_chat, open_page):
    server = await make_chat()
    ann = await open_page(page_url(server.port), None)
    await ann.page.locator("#nick-dialog").wait_for(state="visible")
    await ann.page.fill("#nick-input", "ann")
    await ann.page.press("#nick-input", "Enter")
    await ann.wait_state("connected")
    assert await focused(ann) == "input"
    await ann.page.keyboard.insert_text("typed straight away")
    await ann.page.keyboard.press("Enter")
    await ann.wait_texts(["typed straight away"])


async def test_own_messages_keep_their_order_under_the_rate_limit(make_chat, open_page):
    server = await make_chat(rate=3, burst=6)
    ann = await open_page(page_url(server.port), "ann")
    typed = [f"m{i:02d}" for i in range(1, 21)]
    for text in typed:
        await ann.send(text)
    # Far faster than 3 a second: the page says it is slowing down.
    note = ann.page.locator("#send-note")
    await note.wait_for(state="visible")
    assert "slow down" in (await note.text_content() or "").lower()
    await ann.wait_texts(typed, within=30)
    assert await ann.pending() == []
    assert await stored_texts(server.port, "lobby") == typed
    await note.wait_for(state="hidden")


async def test_a_refused_message_is_resent_before_anything_typed_after_it(make_chat, open_page):
    """The server refuses m3 once (rate_limited), and the refusal takes its time to come
    back (a round trip): nothing typed after m3 may be stored before it."""
    server = await make_chat(rate=0)
    refused: list[str] = []
    later: list[str] = []  # what the page sent while m3's refusal was on its way
    loop = asyncio.get_running_loop()

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()
        owed: list[dict[str, Any]] = []

        def refuse() -> None:
            while owed:
                frame = owed.pop()
                ws.send(json.dumps({
                    "type": "error", "code": "rate_limited", "ref": "send",
                    "message": "too many frames; retry in 0.30s",
                    "room": frame["room"], "id": frame["id"],
                }))  # fmt: skip

        def up(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "send" and frame["text"] == "m3" and not refused:
                refused.append(frame["id"])
                owed.append(frame)
                loop.call_later(1.0, refuse)  # or earlier, when the next message comes
                return
            server_ws.send(message)
            if frame["type"] == "send" and owed:
                later.append(frame["text"])
                refuse()

        ws.on_message(up)
        server_ws.on_message(ws.send)

    ann = await open_page(page_url(server.port), "ann", route=route)
    typed = [f"m{i}" for i in range(1, 8)]
    for text in typed:
        await ann.send(text)
    await ann.wait_texts(typed, within=20)
    assert refused, "the route never refused m3"
    assert later == [], f"sent behind a message still unanswered: {later}"
    assert await stored_texts(server.port, "lobby") == typed


async def test_a_long_paste_is_kept_whole_and_refused_with_a_counter(make_chat, open_page):
    # 8,000 characters of ASCII fit in 20,000 bytes; 8,000 euro signs (3 bytes each) do not.
    server = await make_chat(rate=0, max_message_size=20_000)
    ann = await open_page(page_url(server.port), "ann")
    box = ann.page.locator("#input")
    counter = ann.page.locator("#char-count")
    await box.click()
    await ann.page.keyboard.insert_text("y" * 9000)
    assert len(await box.input_value()) == 9000  # nothing cut off
    await counter.wait_for(state="visible")
    assert "9,000 / 8,000" in (await counter.text_content() or "")
    assert "1,000 too many" in (await counter.text_content() or "")
    assert await box.get_attribute("aria-invalid") == "true"
    await box.press("Enter")
    assert "Not sent" in (await counter.text_content() or "")
    assert len(await box.input_value()) == 9000 and await ann.pending() == []

    await box.fill("€" * 8000)  # within max_text, but not within the server's frame limit
    await box.press("Enter")
    assert "too large to send" in (await counter.text_content() or "")
    assert await ann.pending() == []

    await box.fill("z" * 8000)  # exactly the limit the welcome frame gave: sent whole
    assert await box.get_attribute("aria-invalid") == "false"
    await box.press("Enter")
    await ann.wait_texts(["z" * 8000])
    assert await stored_texts(server.port, "lobby") == ["z" * 8000]
    await counter.wait_for(state="hidden")


async def test_the_first_retry_after_a_working_connection_comes_within_a_second(
    make_chat, open_page
):
    server = await make_chat()
    attempts: list[float] = []  # when the page opened each WebSocket
    down = asyncio.Event()
    live: list[Any] = []
    closing: list[Any] = []

    def route(ws: Any) -> None:
        attempts.append(time.monotonic())
        if down.is_set():
            closing.append(asyncio.ensure_future(ws.close(code=1006, reason="test: server down")))
            return
        server_ws = ws.connect_to_server()
        live.append(ws)
        ws.on_message(server_ws.send)
        server_ws.on_message(ws.send)

    ann = await open_page(page_url(server.port), "ann", route=route)

    async def failures(n: int) -> bool:
        return len(attempts) >= n

    async def lost(how: dict[str, Any]) -> float:
        """Drop the live connection; return how long the page waited before trying again."""
        before = len(attempts)
        cut = time.monotonic()
        await live[-1].close(**how)
        await wait_until(lambda: failures(before + 1), "retrying")
        return attempts[before] - cut

    # The server restarts (1001) and stays down through several failed attempts:
    # those back off exponentially... (Down means plain HTTP fails too: a
    # WebSocket that fails while the server answers HTTP is a blocked one, and
    # the page would fall back to server-sent events.)
    await ann.page.route("**/healthz", lambda route: route.abort())
    down.set()
    assert await lost({"code": 1001, "reason": "test: going away"}) < 2.0
    await wait_until(lambda: failures(5), "four failed attempts", within=20)
    assert attempts[-1] - attempts[-2] > 0.2, attempts
    down.clear()
    await ann.page.unroute("**/healthz")
    await ann.wait_state("connected", within=20)
    # ...but a connection that was up, even for less than 10 s, is retried at once
    # after it drops, however many attempts the previous outage took.
    # (It waited 4-16 s here before: the failed attempts of the outage still counted.)
    assert await lost({"code": 4100, "reason": "test: connection lost"}) < 2.0
    await ann.wait_state("connected", within=10)
    assert await ann.page.evaluate("hubbub.attempt") == 0


async def test_the_new_dm_toast_goes_when_the_conversation_is_opened(make_chat, open_page):
    server = await make_chat()
    url = page_url(server.port)
    ann = await open_page(url, "ann")
    bob = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "bob", "lobby")
    await bob.put(type="dm", room="lobby", to="ann", text="psst")
    toast = ann.page.locator(".toast", has_text="New direct message from bob")
    await toast.wait_for()
    await ann.page.locator("#dm-list .side-item", has_text="bob").click()  # not the toast's Open
    await ann.wait_texts(["psst"])
    await settled(ann.page)
    assert await toast.count() == 0
    await bob.close()


async def test_the_page_never_offers_a_direct_message_with_oneself(make_chat, open_page):
    server = await make_chat()
    ann = await open_page(page_url(server.port), "ann")
    members = ann.page.locator("#member-list")
    await members.locator(".me-member").get_by_text("ann").wait_for()
    assert await members.get_by_role("button").count() == 0
    bob = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "bob", "lobby")
    await members.get_by_role("button", name="bob (direct message)").wait_for()
    assert await members.get_by_role("button").count() == 1
    # A direct message that names us as the peer (a confused or hostile client) opens nothing.
    await ann.page.evaluate(
        """() => hubbub.ws.dispatchEvent(new MessageEvent('message', {data: JSON.stringify(
             {type: 'dm', room: 'lobby', from: 'ann', to: 'ann', text: 'me', id: 'x1', ts: 1})}))"""
    )
    await settled(ann.page)
    assert await ann.page.locator("#dm-list .side-item").count() == 0
    await bob.close()
