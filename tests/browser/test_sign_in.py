"""Sign-in tokens in the browser client: #token= in the address, window.hubbub.setToken,
window.hubbub.onTokenExpired, and "Sign-in needed" on a server that requires a token."""

from __future__ import annotations

import time

import jwt
import pytest

from .conftest import NO_WEBSOCKET, ChatPage

pytestmark = pytest.mark.timeout(60)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def token(sub: str, name: str, ttl: float = 3600) -> str:
    claims = {"sub": sub, "name": name, "exp": int(time.time() + ttl)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def page_url(port: int, fragment: str = "") -> str:
    return f"http://127.0.0.1:{port}/{fragment}"


async def sign_in_shown(who: ChatPage) -> bool:
    return (await who.page.text_content("#conn-text")) == "Sign-in needed" and (
        "Sign-in needed" in (await who.page.text_content("#banner-text") or "")
    )


async def test_a_token_in_the_address_signs_the_page_in_on_every_transport(make_chat, open_page):
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ann_token = token("ann", "Ann")
    # No nickname stored: the token says who this is, no dialog is shown.
    ann = await open_page(page_url(server.port, f"#token={ann_token}"), None, wait=False)
    await ann.wait_state("connected")
    assert not await ann.page.locator("#nick-dialog").is_visible()
    # Read once: out of the address bar (and so out of history and bookmarks), kept for the tab.
    assert await ann.page.evaluate("location.href") == page_url(server.port)
    assert await ann.page.evaluate("sessionStorage.getItem('hubbub.token')") == ann_token
    await ann.wait_for(lambda: ann.page.text_content("#me-nick"), "Ann")
    # bob signs in over server-sent events: the auth frame travels on every transport.
    bob = await open_page(
        page_url(server.port, f"#token={token('bob', 'Bob')}"),
        None,
        wait=False,
        init_script=NO_WEBSOCKET,
    )
    await bob.wait_state("connected")
    assert await bob.transport() == "sse"
    await ann.send("signed in as Ann")
    await bob.wait_texts(["signed in as Ann"])
    author = bob.page.locator(".view:not([hidden]) .msg-list .msg .author").first
    assert await author.text_content() == "Ann"
    # A reload keeps the sign-in (sessionStorage), without a token in the address.
    await ann.page.reload()
    await ann.wait_state("connected")
    await ann.wait_texts(["signed in as Ann"])


async def test_without_a_token_the_page_says_sign_in_needed_then_set_token_signs_in(
    make_chat, open_page
):
    server = await make_chat(auth="token", jwt_secret=SECRET, auth_timeout=30)
    eve = await open_page(page_url(server.port), "eve", wait=False)
    # At once, not after the server's 30 s auth timeout; and the page stops retrying.
    await eve.wait_for(lambda: sign_in_shown(eve), True, within=5)
    assert await eve.state() == "failed"
    # The embedding site's login hook.
    await eve.page.evaluate("t => window.hubbub.setToken(t)", token("eve", "Eve"))
    await eve.wait_state("connected")
    assert not await eve.page.locator("#banner").is_visible()
    await eve.send("now I am in")
    await eve.wait_texts(["now I am in"])


async def test_an_expired_token_is_refreshed_by_the_hook_and_the_rooms_resume(make_chat, open_page):
    server = await make_chat(auth="token", jwt_secret=SECRET)
    first = token("ann", "Ann", ttl=4)
    fresh = token("ann", "Ann")
    ann = await open_page(page_url(server.port, f"#token={first}"), None, wait=False)
    await ann.wait_state("connected")
    await ann.page.evaluate(
        "t => { window.hubbub.asked = 0; window.hubbub.onTokenExpired = () => "
        "{ window.hubbub.asked += 1; return new Promise(r => setTimeout(() => r(t), 100)); }; }",
        fresh,
    )
    await ann.send("before expiry")
    await ann.wait_texts(["before expiry"])
    # The server closes with 4402 when the token expires; the hook gives a new one.
    await ann.wait_for(lambda: ann.page.evaluate("window.hubbub.asked"), 1, within=20)
    await ann.wait_state("connected")
    assert await ann.page.evaluate("window.hubbub.linkToken") == fresh
    await ann.send("after the refresh")
    await ann.wait_texts(["before expiry", "after the refresh"])
    assert await ann.page.evaluate("sessionStorage.getItem('hubbub.token')") == fresh


async def test_an_expired_token_without_a_hook_says_sign_in_needed(make_chat, open_page):
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ann = await open_page(
        page_url(server.port, f"#token={token('ann', 'Ann', ttl=3)}"), None, wait=False
    )
    await ann.wait_state("connected")
    await ann.wait_for(lambda: sign_in_shown(ann), True, within=20)
    assert "expired" in (await ann.page.text_content("#banner-text") or "")


async def test_a_bad_token_says_sign_in_needed(make_chat, open_page):
    server = await make_chat(auth="token", jwt_secret=SECRET)
    forged = jwt.encode({"sub": "ann", "name": "Ann"}, "another-secret-" * 3, algorithm="HS256")
    ann = await open_page(page_url(server.port, f"#token={forged}"), None, wait=False)
    await ann.wait_for(lambda: sign_in_shown(ann), True, within=10)
    assert await ann.state() == "failed"


async def test_a_page_kicked_by_an_administrator_says_so_and_stays_away(make_chat, open_page):
    server = await make_chat()
    ann = await open_page(page_url(server.port), "ann")
    await ann.wait_state("connected")
    (fd,) = list(server.connections)
    assert server.disconnect(fd, 4000, "kicked by an administrator")
    await ann.wait_for(lambda: _kicked_shown(ann), True)
    # It does not come back by itself: a reconnect would come within 0.5 s of
    # the close; none comes in six times that.
    with pytest.raises(AssertionError):
        await ann.wait_for(lambda: _count(server), 1, within=3.0)


async def _kicked_shown(who: ChatPage) -> bool:
    text = await who.page.text_content("#banner-text") or ""
    return "disconnected by an administrator" in text


async def _count(server: object) -> int:
    return len(server.connections)  # type: ignore[attr-defined]
