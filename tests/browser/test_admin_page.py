"""The admin page (/admin) in headless Chromium: sign in with the API key, see the
live connections and rooms, kick a client (it sees the kick close code), delete a
room and reset one; the key never goes into a URL; axe-core finds no serious issue.

The screenshot admin.png is taken here (desktop width; into docs/img/ with
HUBBUB_UPDATE_SCREENSHOTS=1, see the ``shots`` fixture)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from hubbub.apps.admin_api import CLOSE_KICKED, KICK_REASON
from hubbub.store import PendingMessage

from ..apps.test_admin_api import KEY, V1, admin_chat  # noqa: F401 (a fixture)
from .conftest import DESKTOP, wait_until

pytestmark = pytest.mark.timeout(90)


async def rows(page: Any, table: str) -> list[list[str]]:
    """The cells' texts of a table's body rows, top to bottom."""
    return await page.evaluate(
        """id => Array.from(document.querySelectorAll(`#${id} tbody tr`)).map(
             tr => Array.from(tr.children).map(td => td.textContent))""",
        table,
    )


async def first_column(page: Any, table: str) -> list[str]:
    return [r[0] for r in await rows(page, table)]


async def confirm(page: Any, button: Any, audit: Any = None) -> None:
    """Click an action's button and confirm it in the dialog (audited when ``audit``)."""
    await button.click()
    dialog = page.locator("#confirm")
    await dialog.wait_for(state="visible")
    if audit is not None:
        await audit(page, "admin: confirmation dialog")
    await page.click("#confirm-ok")
    await dialog.wait_for(state="hidden")


async def closed_with(client: V1) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(client.ws.recv(), 10)
    return client.ws.close_code, client.ws.close_reason


async def test_an_operator_signs_in_watches_kicks_deletes_and_resets(
    admin_chat: Any,  # noqa: F811
    browser: Any,
    axe: Any,
    shots: Path,
) -> None:
    server = await admin_chat(rate=0)
    ann = await V1.open(server, "ann", "lobby", "design")
    bob = await V1.open(server, "bob", "lobby")
    cat = await V1.open(server, "cat", "random")
    for i in range(6):
        await ann.say("lobby", f"hello {i}", f"a{i}")
    await cat.say("random", "anyone?", "c1")
    await bob.say("lobby", "hi ann", "b1")

    context = await browser.new_context(viewport=DESKTOP, reduced_motion="reduce")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    try:
        await page.goto(f"http://127.0.0.1:{server.port}/admin")
        await page.locator("#login").wait_for(state="visible")
        await axe(page, "admin: sign-in form")

        # A wrong key is refused in words (and logged: it shows in recent errors later).
        await page.fill("#key-input", "not-the-key")
        await page.press("#key-input", "Enter")
        await wait_until(
            lambda: page.text_content("#login-error"), "an error for the wrong key", 10
        )
        assert await page.text_content("#login-error") == "invalid api key"

        await page.fill("#key-input", KEY)
        await page.click("#login-form button[type=submit]")
        await page.locator("#dashboard").wait_for(state="visible")
        assert await page.evaluate("() => sessionStorage.getItem('hubbub.adminKey')") == KEY
        fds = sorted([ann.fd, bob.fd, cat.fd])
        await wait_until(
            lambda: _equal(first_column(page, "conn-table"), [str(fd) for fd in fds]),
            "the three connections listed",
        )
        table = {r[0]: r for r in await rows(page, "conn-table")}
        assert table[str(ann.fd)][2:6] == ["hubbub.v1", "websocket", "ann", "design, lobby"]
        await wait_until(
            lambda: _equal(first_column(page, "rooms-table"), ["#design", "#lobby", "#random"]),
            "the three rooms listed",
        )
        lobby = {r[0]: r for r in await rows(page, "rooms-table")}["#lobby"]
        assert lobby[1:3] == ["2", "7"]  # members, newest seq
        # Traffic while the page watches: #lobby's rate (from the newest seq sampled
        # at each poll) goes above zero.
        for i in range(5):
            await bob.say("lobby", f"more {i}", f"b-more{i}")
        await cat.say("random", "still here", "c2")
        await wait_until(lambda: _rate_above_zero(page, "#lobby"), "a rate for #lobby", 10)
        await page.locator("#errors li").first.wait_for()
        assert "admin API request: invalid api key" in (await page.text_content("#errors"))
        await axe(page, "admin: dashboard, light")
        await page.emulate_media(color_scheme="dark")
        await axe(page, "admin: dashboard, dark")
        await page.emulate_media(color_scheme="light")
        await page.screenshot(path=str(shots / "admin.png"), full_page=True)

        # Kick ann: her client sees the kick close code; her row goes.
        kick = page.get_by_role("button", name=f"Kick connection {ann.fd}", exact=False)
        await confirm(page, kick, axe)
        assert await closed_with(ann) == (CLOSE_KICKED, KICK_REASON)
        await wait_until(
            lambda: _equal(first_column(page, "conn-table"), [str(bob.fd), str(cat.fd)]),
            "ann's row gone",
        )
        assert "kicked" in (await page.text_content("#notice"))

        # Delete #random: cat is told; the room goes from the list.
        await confirm(page, page.get_by_role("button", name="Delete random"))
        await cat.until("left_room", room="random", reason="deleted")
        await wait_until(
            lambda: _equal(first_column(page, "rooms-table"), ["#design", "#lobby"]),
            "#random gone",
        )

        # Reset #lobby: bob stays in, is told, and the room shows no messages.
        await confirm(page, page.get_by_role("button", name="Reset history of lobby"))
        reset = await bob.until("reset", room="lobby")
        assert reset["reason"] == "epoch" and reset["seq"] == 0
        await wait_until(lambda: _lobby_seq(page, "0"), "#lobby at seq 0")
        ack = await bob.say("lobby", "fresh start", "b2")
        assert ack["seq"] == 1 and ack["epoch"] == reset["epoch"]

        # The key went in a header only: no URL the page asked for holds it.
        assert urls and not [u for u in urls if KEY in u]
        # Signing out forgets it.
        await page.click("#sign-out")
        await page.locator("#login").wait_for(state="visible")
        assert await page.evaluate("() => sessionStorage.getItem('hubbub.adminKey')") is None
    finally:
        await context.close()
        for client in (ann, bob, cat):
            await client.ws.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def _equal(probe: Any, expected: Any) -> bool:
    return await probe == expected


async def _rate_above_zero(page: Any, room: str) -> bool:
    row = {r[0]: r for r in await rows(page, "rooms-table")}.get(room)
    return row is not None and row[3] not in ("", "measuring…") and float(row[3]) > 0


async def _lobby_seq(page: Any, seq: str) -> bool:
    lobby = {r[0]: r for r in await rows(page, "rooms-table")}.get("#lobby")
    return lobby is not None and lobby[2] == seq


async def test_long_lists_are_capped_with_a_note_of_how_many_more(
    admin_chat: Any,  # noqa: F811
    browser: Any,
    axe: Any,
) -> None:
    server = await admin_chat(rate=0, room_create_rate=0)
    # Enough warnings that the recent-errors list scrolls (the log is the process's, so
    # how many a test sees otherwise depends on what ran before it in this worker).
    for i in range(60):
        logging.getLogger("hubbub.test").warning("a warning to fill the list (%d)", i)
    store = server.app.store
    # 101 rooms straight into the store, and the core told (as at start-up).
    await store.append([PendingMessage(f"r{i:03d}", None, "ci", "hi", 0.0) for i in range(101)])
    server.app.core.load_rooms(f"r{i:03d}" for i in range(101))
    context = await browser.new_context(viewport=DESKTOP, reduced_motion="reduce")
    # Signed in earlier in this tab: the key is in sessionStorage.
    await context.add_init_script(f"sessionStorage.setItem('hubbub.adminKey', {KEY!r});")
    page = await context.new_page()
    try:
        await page.goto(f"http://127.0.0.1:{server.port}/admin")
        await page.locator("#dashboard").wait_for(state="visible")
        await wait_until(
            lambda: _equal(_count_rows(page, "rooms-table"), 100), "the first 100 rooms"
        )
        assert await page.text_content("#rooms-more") == "Showing the first 100 of 101 (1 more)"
        await wait_until(
            lambda: page.evaluate(
                "() => { const e = document.getElementById('errors');"
                " return e.scrollHeight > e.clientHeight; }"
            ),
            "the recent-errors list to scroll",
        )
        await axe(page, "admin: long lists")
    finally:
        await context.close()


async def _count_rows(page: Any, table: str) -> int:
    return len(await rows(page, table))
