"""The chat page and the server's later protocol additions: rooms deleted by an
operator (left_room with reason 'deleted', no_such_room) and welcome's limits/rules."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from .conftest import ChatPage, wait_until

pytestmark = pytest.mark.timeout(60)


def page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


async def room_names(who: ChatPage) -> list[str]:
    return await who.page.locator("#room-list .side-name").all_text_contents()


async def delete_room(port: int, room: str, key: str) -> dict[str, Any]:
    def call() -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/rooms/{room}",
            method="DELETE",
            headers={"Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    return await asyncio.to_thread(call)


async def test_a_room_deleted_by_an_operator_leaves_the_page(make_chat, open_page):
    server = await make_chat(rate=0, api_key="k")
    ann = await open_page(page_url(server.port), "ann", rooms=["ops", "lobby"])
    await ann.wait_for(lambda: room_names(ann), ["ops", "lobby"])
    await ann.page.locator("#conv-sub").get_by_text("1 member online").wait_for()
    await ann.send("before the delete")
    await ann.wait_texts(["before the delete"])
    assert await ann.page.text_content("#conv-name") == "ops"

    answer = await delete_room(server.port, "ops", "k")
    assert answer == {"deleted": "ops", "members_removed": 1}

    await ann.wait_for(lambda: room_names(ann), ["lobby"])
    await ann.page.locator("#toasts").get_by_text("#ops was deleted").wait_for()
    assert await ann.page.text_content("#conv-name") == "lobby"
    assert await ann.page.evaluate("JSON.parse(localStorage.getItem('hubbub.rooms'))") == ["lobby"]
    assert await ann.state() == "connected"


async def test_no_such_room_removes_the_room_instead_of_asking_again(make_chat, open_page):
    """A history request answered no_such_room (the room went between join and history)."""
    server = await make_chat(rate=0)
    asked: list[dict[str, Any]] = []

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()

        def up(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "history" and frame["room"] == "gone":
                asked.append(frame)
                ws.send(json.dumps({
                    "type": "error", "code": "no_such_room", "ref": "history", "room": "gone",
                    "message": "no room 'gone'",
                }))  # fmt: skip
                return
            server_ws.send(message)

        ws.on_message(up)
        server_ws.on_message(ws.send)

    ann = await open_page(page_url(server.port), "ann", rooms=["gone", "lobby"], route=route)
    await wait_until(lambda: asyncio.sleep(0, asked), "asked for gone's history")
    await ann.wait_for(lambda: room_names(ann), ["lobby"])
    assert await ann.page.text_content("#conv-name") == "lobby"
    await ann.page.locator("#toasts").get_by_text("#gone no longer exists").wait_for()
    assert len(asked) == 1


async def test_name_checks_and_history_pages_follow_the_welcome_frame(make_chat, open_page):
    server = await make_chat(rate=0)
    sent: list[dict[str, Any]] = []

    def route(ws: Any) -> None:
        server_ws = ws.connect_to_server()

        def up(message: str | bytes) -> None:
            sent.append(json.loads(message))
            server_ws.send(message)

        def down(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "welcome":  # a server with other numbers and rules
                frame["limits"].update(max_nick=5, max_room=6, history_page=20)
                frame["rules"] = {"nick": "NICK RULE in words", "room": "ROOM RULE in words"}
                message = json.dumps(frame)
            ws.send(message)

        ws.on_message(up)
        server_ws.on_message(down)

    ann = await open_page(page_url(server.port), "ann", route=route)
    await wait_until(
        lambda: asyncio.sleep(0, [f for f in sent if f["type"] == "history"]), "a history request"
    )
    assert all(f["limit"] <= 20 for f in sent if f["type"] == "history"), sent
    page = ann.page
    assert await page.get_attribute("#nick-input", "maxlength") == "5"
    assert await page.get_attribute("#join-input", "maxlength") == "6"

    # A nickname longer than the server's max_nick is refused with the server's rule.
    await page.click("#nick-edit")
    await page.evaluate("document.getElementById('nick-input').value = 'abcdef'")
    await page.click("#nick-ok")
    await page.locator("#nick-error").get_by_text("NICK RULE in words").wait_for()
    assert not [f for f in sent if f["type"] == "nick"]
    await page.click("#nick-cancel")

    # A room name longer than max_room too, with the room rule.
    await page.evaluate("document.getElementById('join-input').value = 'abcdefg'")
    await page.locator("#join-input").press("Enter")
    message = await page.evaluate("document.getElementById('join-input').validationMessage")
    assert message == "ROOM RULE in words"
    assert await room_names(ann) == ["lobby"]
    assert not [f for f in sent if f["type"] == "join" and f["room"] == "abcdefg"]
