"""Browser tests: the chat page in a real headless Chromium.

Debian's ``chromium`` package (``/usr/bin/chromium``, installed by ``make
test``) is driven by Python Playwright through its async API, on the same
uvloop event loop as the rest of the suite, so an in-process server
(``make_chat``) and the browser share one loop. Playwright never downloads a
browser here (no ``playwright install``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# axe-core from the npm registry (tests/browser/package.json), installed by `make node-deps`.
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
# Served to the page under test from its own origin (the page's CSP allows 'self' scripts only).
AXE_URL = "/__tests__/axe.min.js"

# What the page shows, read in the page (never through innerHTML).
_TEXTS = """sel => Array.from(document.querySelectorAll(
  '.view:not([hidden]) ' + sel)).map(e => e.textContent)"""


@pytest.fixture
def shots() -> Path:
    """Where screenshots go: reports/screenshots/ (not tracked), or docs/img/ (the
    README's pictures) with HUBBUB_UPDATE_SCREENSHOTS=1, so a test run leaves the
    work tree clean."""
    root = Path(__file__).resolve().parent.parent.parent
    if os.environ.get("HUBBUB_UPDATE_SCREENSHOTS") == "1":
        folder = root / "docs" / "img"
    else:
        folder = root / "reports" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; its absence is a failure (``make test`` installs it), not a skip."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package; "
            "`make test` installs it (make system-deps: apt-get install chromium)",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "Python Playwright is missing: `make test` installs it (pip install -e '.[dev]')",
            pytrace=False,
        )
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


class ChatPage:
    """One person with the chat page open in their own browser context."""

    def __init__(self, page: Any, nick: str | None) -> None:
        self.page = page
        self.context = page.context
        self.nick = nick
        self.errors: list[str] = []  # uncaught exceptions in the page
        self.dialogs: list[str] = []  # alert(), confirm(), ... (there should be none)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("dialog", self._on_dialog)

    async def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    async def send(self, text: str) -> None:
        """Type ``text`` in the composer and press Enter (newlines with Shift+Enter)."""
        box = self.page.locator("#input")
        await box.click()
        for i, line in enumerate(text.split("\n")):
            if i:
                await box.press("Shift+Enter")
            if line:
                await self.page.keyboard.insert_text(line)
        await box.press("Enter")

    async def texts(self) -> list[str]:
        """Stored messages shown in the current conversation, top to bottom."""
        return await self.page.evaluate(_TEXTS, ".msg-list .msg .msg-text")

    async def seqs(self) -> list[int]:
        got = await self.page.evaluate(
            "() => Array.from(document.querySelectorAll("
            "'.view:not([hidden]) .msg-list .msg')).map(e => Number(e.dataset.seq))"
        )
        return [int(s) for s in got]

    async def count(self) -> int:
        """How many stored messages the current conversation shows."""
        return len(await self.texts())

    async def pending(self) -> list[str]:
        """Messages typed here and not yet confirmed by the server."""
        return await self.page.evaluate(_TEXTS, ".pending-tail .msg .msg-text")

    async def state(self) -> str:
        return str(await self.page.get_attribute("#conn", "data-state"))

    async def transport(self) -> str:
        """The transport the page says it is on: websocket, sse or poll ("" before any)."""
        return str(await self.page.get_attribute("#conn", "data-transport"))

    async def wait_for(
        self, probe: Callable[[], Awaitable[Any]], expected: Any, within: float = 10.0
    ) -> None:
        deadline = time.monotonic() + within
        got = await probe()
        while got != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.nick}: expected {expected!r}, still {got!r}")
            await asyncio.sleep(0.05)
            got = await probe()

    async def wait_texts(self, expected: list[str], within: float = 10.0) -> None:
        await self.wait_for(self.texts, expected, within)

    async def wait_state(self, state: str, within: float = 10.0) -> None:
        await self.wait_for(self.state, state, within)


#: Init scripts that take transports away from a page, as a network that blocks them would.
NO_WEBSOCKET = "delete window.WebSocket;"
NO_STREAMS = "delete window.WebSocket; delete window.EventSource;"


@pytest.fixture
async def open_page(browser: Any) -> AsyncIterator[Callable[..., Awaitable[ChatPage]]]:
    """``await open_page(url, nick, viewport=DESKTOP, rooms=None)``: a new person's page.

    ``nick`` (and ``rooms``) are put in localStorage before the page's first
    load, as if the person had chosen them on an earlier visit; ``nick=None``
    is a first visit. The page has its own context (own storage, own socket).
    ``init_script`` runs before the page's scripts on every load (``NO_WEBSOCKET``
    forces the SSE fallback, ``NO_STREAMS`` long polling); ``ignore_https_errors``
    accepts the test's own TLS certificate.
    """
    pages: list[ChatPage] = []

    async def factory(
        url: str,
        nick: str | None,
        viewport: dict[str, int] = DESKTOP,
        rooms: list[str] | None = None,
        wait: bool = True,
        route: Callable[[Any], Any] | None = None,
        color_scheme: str = "light",
        init_script: str | None = None,
        ignore_https_errors: bool = False,
    ) -> ChatPage:
        context = await browser.new_context(
            viewport=viewport,
            reduced_motion="reduce",
            color_scheme=color_scheme,
            ignore_https_errors=ignore_https_errors,
        )
        if init_script is not None:
            # Runs before the page's own scripts on every load (e.g. to take WebSocket away).
            await context.add_init_script(init_script)
        setup = []
        if nick is not None:
            setup.append(f"localStorage.setItem('hubbub.nick', {json.dumps(nick)});")
        if rooms is not None:
            setup.append(f"localStorage.setItem('hubbub.rooms', {json.dumps(json.dumps(rooms))});")
            setup.append(f"localStorage.setItem('hubbub.current', {json.dumps('#' + rooms[0])});")
        if setup:
            # Only on the very first load: a reload keeps what the page stored.
            await context.add_init_script(
                "if (!sessionStorage.getItem('seeded')) {"
                + "".join(setup)
                + "sessionStorage.setItem('seeded', '1'); }"
            )
        page = await context.new_page()
        chat = ChatPage(page, nick)
        pages.append(chat)
        if route is not None:
            await page.route_web_socket("**/*", route)
        await page.goto(url)
        if wait and nick is not None:
            await chat.wait_state("connected")
        return chat

    yield factory
    errors = [f"{p.nick}: {e}" for p in pages for e in p.errors]
    for p in pages:
        await p.context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


class V1Client:
    """A minimal hubbub.v1 client (outside the browser) that posts and waits for acks."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, nick: str, *rooms: str) -> V1Client:
        from websockets.asyncio.client import connect

        client = cls(await connect(url, subprotocols=["hubbub.v1"]))
        await client.until("welcome")
        for room in rooms:
            await client.put(type="join", room=room, nick=nick)
            await client.until("room", room=room)
        return client

    async def put(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def until(self, type_: str, within: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Read frames until one of ``type_`` with these fields arrives."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_} {fields} within {within}s")
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            if frame["type"] == type_ and all(frame.get(k) == v for k, v in fields.items()):
                return frame

    async def say(self, room: str, text: str) -> dict[str, Any]:
        """Send a message and wait for its ack."""
        cid = uuid.uuid4().hex
        await self.put(type="send", room=room, id=cid, text=text)
        return await self.until("ack", id=cid)

    async def close(self) -> None:
        await self.ws.close()


async def wait_until(probe: Callable[[], Awaitable[Any]], what: str, within: float = 10.0) -> Any:
    """Poll ``probe`` until it returns something truthy (and return that)."""
    deadline = time.monotonic() + within
    while not (got := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {within}s (last: {got!r})")
        await asyncio.sleep(0.05)
    return got


async def settled(page: Any) -> None:
    """Wait until the page has rendered two frames: scroll and resize handlers have run."""
    await page.evaluate(
        "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r())))"
    )


async def stored_texts(port: int, room: str) -> list[str]:
    """The texts the server stored in ``room``, oldest first (GET /api/rooms/{room}/messages)."""

    def get() -> Any:
        url = f"http://127.0.0.1:{port}/api/rooms/{room}/messages?limit=200"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    page = await asyncio.to_thread(get)
    return [m["text"] for m in page["messages"]]


# Rules are axe-core's defaults plus the experimental "label in name" check (WCAG 2.5.3).
_AXE_OPTIONS = {
    "resultTypes": ["violations"],
    "rules": {"label-content-name-mismatch": {"enabled": True}},
}
BLOCKING = ("serious", "critical")


@pytest.fixture
def axe() -> Callable[[Any, str], Awaitable[list[dict[str, Any]]]]:
    """``await axe(page, "what is shown")``: run axe-core on the page as it is now and fail
    on any serious or critical violation; returns all violations (for milder checks)."""
    if not AXE.exists():
        pytest.fail(
            f"{AXE.relative_to(Path(__file__).parent.parent.parent)} is missing: run "
            "`make node-deps` (npm install --prefix tests/browser) to install axe-core "
            "for the accessibility tests",
            pytrace=False,
        )

    async def audit(page: Any, state: str) -> list[dict[str, Any]]:
        if not await page.evaluate("() => typeof window.axe === 'object'"):
            await page.route(
                f"**{AXE_URL}",
                lambda route: route.fulfill(path=str(AXE), content_type="text/javascript"),
            )
            await page.add_script_tag(url=AXE_URL)
        result = await page.evaluate("options => axe.run(document, options)", _AXE_OPTIONS)
        violations: list[dict[str, Any]] = result["violations"]
        blocking = [v for v in violations if v["impact"] in BLOCKING]
        lines = []
        for v in blocking:
            lines.append(f"{v['impact']} {v['id']}: {v['help']} ({v['helpUrl']})")
            for node in v["nodes"][:5]:
                summary = " ".join(node.get("failureSummary", "").split())
                lines.append(f"    {node['target']}: {summary}")
        assert not blocking, f"accessibility violations ({state}):\n" + "\n".join(lines)
        return violations

    return audit
