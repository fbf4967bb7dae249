"""axe-core audits of the pages hubbub serves: no serious or critical violation.

axe-core comes from the npm registry (tests/browser/package.json, `make
node-deps`) and is served to the page from its own origin by the ``axe``
fixture, never from a CDN.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import DESKTOP, PHONE, V1Client, wait_until

pytestmark = pytest.mark.timeout(60)

WIDTHS = {"desktop": DESKTOP, "phone": PHONE}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", ["desktop", "phone"])
async def test_the_chat_page_passes_an_axe_audit_in_every_state(
    make_chat, open_page, axe, width, scheme
):
    server = await make_chat(rate=0)
    url = f"http://127.0.0.1:{server.port}/"
    bob = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "bob", "lobby")
    await bob.say("lobby", "hello from bob")

    sockets: list[Any] = []

    def route(ws: Any) -> None:  # pass-through, so that the test can cut the connection
        sockets.append(ws)
        server_ws = ws.connect_to_server()
        ws.on_message(server_ws.send)
        server_ws.on_message(ws.send)

    # A first visit: the nickname dialog.
    ann = await open_page(url, None, viewport=WIDTHS[width], color_scheme=scheme, route=route)
    await ann.page.locator("#nick-dialog").wait_for(state="visible")
    await axe(ann.page, f"{width}, {scheme}: nickname dialog")
    await ann.page.fill("#nick-input", "ann")
    await ann.page.press("#nick-input", "Enter")
    await ann.wait_state("connected")

    # Joined, with someone else in the room, a message sent, a direct message received.
    await ann.send("hello from ann")
    await ann.wait_texts(["hello from bob", "hello from ann"])
    await bob.put(type="dm", room="lobby", to="ann", text="psst")
    await ann.page.locator("#dm-list .side-item").first.wait_for(state="attached")
    await ann.page.locator(".toast").first.wait_for()
    await axe(ann.page, f"{width}, {scheme}: joined, a message sent, a DM toast")

    # The drawers a phone shows (on a desktop they are always there).
    if width == "phone":
        await ann.page.click("#menu-btn")
        await ann.page.locator("#sidebar").get_by_role("button", name="lobby").wait_for()
        await axe(ann.page, f"{width}, {scheme}: rooms drawer open")
        await ann.page.keyboard.press("Escape")
        await ann.page.locator("#sidebar").wait_for(state="hidden")
        await ann.page.click("#members-btn")
        await ann.page.locator("#member-list").get_by_text("bob").wait_for()
        await axe(ann.page, f"{width}, {scheme}: member list open")
        await ann.page.keyboard.press("Escape")

    # Offline: the banner and the connection state in their warning colours.
    await ann.context.set_offline(True)
    await sockets[-1].close(code=1006, reason="test: network gone")
    await ann.wait_for(ann.state, "offline")
    await ann.send("typed while offline")
    await ann.page.locator("#banner").wait_for(state="visible")
    await axe(ann.page, f"{width}, {scheme}: offline, a message waiting")
    await ann.context.set_offline(False)
    await bob.close()


async def test_the_member_button_and_entries_are_named_by_their_visible_text(
    make_chat, open_page
):
    server = await make_chat(rate=0)
    bob = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "bob", "lobby")
    ann = await open_page(f"http://127.0.0.1:{server.port}/", "ann")
    members = ann.page.locator("#members-btn")
    await wait_until(
        lambda: members.evaluate("b => b.textContent.includes('2')"), "showing 2 members"
    )
    # The count one sees is in the name a screen reader or voice control uses.
    assert "2" in (await ann.page.get_by_role("button", name="Members online: 2").inner_text())
    entry = ann.page.get_by_role("button", name="bob (direct message)")
    assert (await entry.locator(".member-name").inner_text()) == "bob"
    await bob.close()


@pytest.mark.parametrize("width", ["desktop", "phone"])
async def test_the_seed_page_passes_an_axe_audit(make_chat, browser, axe, width):
    server = await make_chat(rate=0)
    context = await browser.new_context(viewport=WIDTHS[width])
    try:
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{server.port}/seed.html")
        await page.get_by_text("Hello, welcome").wait_for()
        await page.fill("#text", "hi")
        await page.press("#text", "Enter")
        await page.get_by_text("server: hi").wait_for()
        violations = await axe(page, f"/seed.html at {width} width")
        # Milder, but asked for: everything inside landmarks, with one main.
        assert not [v["id"] for v in violations if v["id"] in ("landmark-one-main", "region")]
        assert await page.locator("main").count() == 1
    finally:
        await context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", ["desktop", "phone"])
async def test_the_push_vs_polling_demo_passes_an_axe_audit(make_chat, browser, axe, width, scheme):
    server = await make_chat(rate=0)
    context = await browser.new_context(viewport=WIDTHS[width], color_scheme=scheme)
    try:
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{server.port}/demo/push-vs-polling")
        await page.locator('[data-panel="ws"] .state').get_by_text("in #demo").wait_for()
        await page.fill("#send-input", "hello, five clients")
        await page.press("#send-input", "Enter")
        # Messages in the lists, the counters filled in: the page as a reader sees it.
        await page.locator('[data-panel="poll1"] .feed li').first.wait_for()
        await page.click("#auto-btn")
        violations = await axe(page, f"/demo/push-vs-polling at {width} width, {scheme}")
        assert not [v["id"] for v in violations if v["id"] in ("landmark-one-main", "region")]
        await page.click("#auto-btn")
    finally:
        await context.close()
