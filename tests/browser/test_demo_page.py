"""The live push-vs-polling page (/demo/push-vs-polling) in headless Chromium:
five clients of one room, each counting what it pays for the same messages."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import DESKTOP, V1Client, settled, wait_until

pytestmark = pytest.mark.timeout(60)

PANELS = ("ws", "sse", "long", "poll1", "poll5")

_COUNTERS = """() => Object.fromEntries(Array.from(document.querySelectorAll('[data-panel]')).map(
  p => [p.dataset.panel, Object.fromEntries(Array.from(p.querySelectorAll('dd[data-counter]'))
    .map(d => [d.dataset.counter, d.textContent]))]))"""
_FEEDS = """() => Object.fromEntries(Array.from(document.querySelectorAll('[data-panel]')).map(
  p => [p.dataset.panel, Array.from(p.querySelectorAll('.feed .text')).map(e => e.textContent)]))"""


def number(text: str) -> int:
    """The number in a counter: "1,234 ms" -> 1234 (formatted for people)."""
    digits = "".join(ch for ch in text if ch.isdigit())
    return int(digits) if digits else 0


async def open_demo(browser: Any, port: int) -> Any:
    context = await browser.new_context(viewport=DESKTOP, reduced_motion="reduce")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"http://127.0.0.1:{port}/demo/push-vs-polling")
    return page


async def test_every_panel_hears_the_news_and_counts_its_cost(make_chat, browser, shots):
    server = await make_chat()
    page = await open_demo(browser, server.port)
    # The pushed clients join the room; the pollers start asking.
    for key in ("ws", "sse", "long"):
        await page.locator(f'[data-panel="{key}"] .state').get_by_text("in #demo").wait_for()

    # A message typed in the box reaches all five.
    await page.fill("#send-input", "hello, five clients")
    await page.press("#send-input", "Enter")
    feeds = await wait_until(
        lambda: _all_have(page, lambda texts: any("hello, five clients" in t for t in texts)),
        "the message in every panel",
        within=15,
    )
    assert set(feeds) == set(PANELS)

    # The auto-sender: a message a second, in front of the reader.
    await page.click("#auto-btn")
    assert await page.get_attribute("#auto-btn", "aria-pressed") == "true"
    await wait_until(
        lambda: _all_have(page, lambda texts: sum("auto message" in t for t in texts) >= 3),
        "three auto messages in every panel",
        within=25,
    )
    counters = await page.evaluate(_COUNTERS)
    # Every panel counted messages, requests and bytes.
    for key in PANELS:
        assert number(counters[key]["messages"]) >= 4, counters[key]
        assert number(counters[key]["requests"]) >= 1, counters[key]
        assert number(counters[key]["bytes"]) > 0, counters[key]
    # Push asks nothing and makes one request; the 1 s poller keeps asking and mostly hears "no"...
    assert number(counters["ws"]["requests"]) == 1
    assert number(counters["ws"]["asks"]) == number(counters["sse"]["asks"]) == 0
    assert number(counters["poll1"]["asks"]) >= 5
    assert number(counters["poll1"]["asks"]) > number(counters["poll5"]["asks"])
    # ...and hears the news later than the push does (median delay).
    assert number(counters["poll5"]["median"]) > number(counters["ws"]["median"])
    # Every panel shows the same messages in the same order (newest first).
    feeds = await page.evaluate(_FEEDS)
    common = [t for t in feeds["ws"] if all(t in feeds[k] for k in PANELS)]
    assert len(common) >= 4
    for key in PANELS:
        assert [t for t in feeds[key] if t in common] == common

    # The counters keep rising while the argument goes on.
    before = number(counters["poll1"]["requests"])
    await wait_until(
        lambda: _counter_above(page, "poll1", "requests", before + 1), "more polls", within=10
    )
    dialogue = await page.text_content("#dialogue-text") or ""
    assert "any news?" in dialogue and "heard “no”" in dialogue

    await page.click("#auto-btn")
    assert await page.get_attribute("#auto-btn", "aria-pressed") == "false"
    await settled(page)
    await page.screenshot(path=str(shots / "push-vs-polling.png"), full_page=True)
    assert page.errors == []
    await page.context.close()


async def test_the_pollers_see_messages_from_other_clients(make_chat, browser):
    server = await make_chat()
    page = await open_demo(browser, server.port)
    await page.locator('[data-panel="ws"] .state').get_by_text("in #demo").wait_for()
    await page.locator('[data-panel="poll5"] .state').get_by_text("asking every 5 s").wait_for()
    poster = await V1Client.open(f"ws://127.0.0.1:{server.port}/", "poster", "demo")
    await poster.say("demo", "from outside the page")
    await wait_until(
        lambda: _all_have(page, lambda texts: any("from outside the page" in t for t in texts)),
        "the outside message in every panel",
        within=15,
    )
    await poster.close()
    assert page.errors == []
    await page.context.close()


async def _all_have(page: Any, test: Any) -> dict[str, list[str]] | None:
    feeds = await page.evaluate(_FEEDS)
    return feeds if all(test(feeds[key]) for key in PANELS) else None


async def _counter_above(page: Any, panel: str, name: str, value: int) -> bool:
    return number((await page.evaluate(_COUNTERS))[panel][name]) > value
