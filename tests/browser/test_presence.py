"""The chat page's member list under coalesced and large-room presence (docs/protocol.md,
*presence*): bursts of joins, leaves and renames in one tick, and a room of more than
``ChatLimits.large_room`` (500) members whose list is read in pages."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from .conftest import ChatPage, V1Client

pytestmark = pytest.mark.timeout(60)

#: Members above which the server treats a room as large (ChatLimits.large_room).
LARGE_ROOM = 500
#: Names the page's member panel keeps at most (MEMBERS_KEEP in static/state.js).
PANEL_CAP = 500
#: Raw clients connected at once (under the server's per-address handshake limit, 64).
CONNECT_BATCH = 32

MEMBER_NAMES = "#member-list .member-name"
PRESENCE = ("presence", "joined", "left", "renamed")


def page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


async def raw_client(port: int) -> V1Client:
    """A hubbub.v1 connection, welcomed, in no room. No compression (a few hundred of
    them stay cheap) and no read limit (frames nobody reads wait in memory, so the
    server never finds it slow)."""
    from websockets.asyncio.client import connect

    ws = await connect(
        f"ws://127.0.0.1:{port}/",
        subprotocols=["hubbub.v1"],
        compression=None,
        max_queue=None,
        ping_interval=None,
    )
    client = V1Client(ws)
    await client.until("welcome")
    return client


async def raw_clients(port: int, n: int) -> list[V1Client]:
    out: list[V1Client] = []
    while len(out) < n:
        batch = min(CONNECT_BATCH, n - len(out))
        out.extend(await asyncio.gather(*(raw_client(port) for _ in range(batch))))
    return out


async def join_all(clients: list[V1Client], nicks: list[str], room: str) -> None:
    """Every client sends its join in the same loop iteration (one burst), then each
    waits for its answer."""
    await asyncio.gather(
        *(c.put(type="join", room=room, nick=n) for c, n in zip(clients, nicks, strict=True))
    )
    await asyncio.gather(*(c.until("room", within=20, room=room) for c in clients))


async def close_all(clients: list[V1Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


class Watcher:
    """A raw member that records the presence frames of a room, to show that the server
    did coalesce what the test sent in one burst (else the test would prove nothing)."""

    def __init__(self, client: V1Client, room: str) -> None:
        self.client = client
        self.room = room

    async def changes(self, until: set[str], within: float = 10.0) -> list[dict[str, Any]]:
        """Presence frames read until every change in ``until`` was seen: ``+nick``
        joined, ``-nick`` left, ``old>nick`` renamed."""
        seen: set[str] = set()
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + within
        while not until <= seen:
            f = await self.next_frame(deadline)
            if f["type"] not in PRESENCE or f.get("room") != self.room:
                continue
            frames.append(f)
            if f["type"] == "presence":
                seen |= {"+" + p["nick"] for p in f["joined"]}
                seen |= {"-" + p["nick"] for p in f["left"]}
                seen |= {r["old"] + ">" + r["nick"] for r in f["renamed"]}
            elif f["type"] == "joined":
                seen.add("+" + f["nick"])
            elif f["type"] == "left":
                seen.add("-" + f["nick"])
            else:
                seen.add(f["old"] + ">" + f["nick"])
        return frames

    async def next_frame(self, deadline: float) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.room}: the changes were not all seen in time")
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.client.ws.recv(), left))
        return frame


def coalesced(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "presence"]


async def member_names(who: ChatPage) -> list[str]:
    return list(await who.page.locator(MEMBER_NAMES).all_text_contents())


async def header_count(who: ChatPage) -> int | None:
    """The member count the header line says ("1,234 members online")."""
    sub = await who.page.text_content("#conv-sub") or ""
    m = re.fullmatch(r"([\d,.\s\u202f]+) members? online", sub.strip())
    return int(re.sub(r"\D", "", m.group(1))) if m else None


async def foot_text(who: ChatPage) -> str:
    foot = who.page.locator("#members-foot")
    if not await foot.is_visible():
        return ""
    return (await who.page.text_content("#members-more-text") or "").strip()


async def test_bursts_of_joins_renames_and_leaves_reach_the_member_list(make_chat, open_page):
    server = await make_chat()
    ann = await open_page(page_url(server.port), "ann")
    watch = Watcher(
        await V1Client.open(f"ws://127.0.0.1:{server.port}/", "watch", "lobby"), "lobby"
    )
    await ann.wait_for(lambda: member_names(ann), ["ann", "watch"])

    # Six people join in one burst: the server sends one `presence` frame.
    nicks = [f"burst{i}" for i in range(6)]
    clients = await raw_clients(server.port, len(nicks))
    await join_all(clients, nicks, "lobby")
    frames = await watch.changes({"+" + n for n in nicks})
    assert coalesced(frames), f"the server did not coalesce the burst: {frames}"
    await ann.wait_for(lambda: member_names(ann), ["ann", *nicks, "watch"])
    assert await header_count(ann) == 8

    # ann opens a DM with burst1 and goes back to the room; burst0 starts typing.
    await ann.page.get_by_role("button", name="burst1 (direct message)").click()
    await ann.page.locator("#room-list").get_by_text("lobby").click()
    await clients[0].put(type="typing", room="lobby", active=True)
    await ann.page.get_by_text("burst0 is typing…").wait_for()

    # One tick: burst0 and burst1 rename, burst2 leaves, a latecomer joins.
    late = await raw_client(server.port)
    await asyncio.gather(
        clients[0].put(type="nick", nick="typist"),
        clients[1].put(type="nick", nick="renamed1"),
        clients[2].put(type="leave", room="lobby"),
        late.put(type="join", room="lobby", nick="late"),
    )
    frames = await watch.changes({"burst0>typist", "burst1>renamed1", "-burst2", "+late"})
    assert coalesced(frames), f"the server did not coalesce the burst: {frames}"
    expected = ["ann", "burst3", "burst4", "burst5", "late", "renamed1", "typist", "watch"]
    await ann.wait_for(lambda: member_names(ann), expected)
    # The rename stopped burst0's typing indicator, and the DM follows burst1's new name.
    assert (await ann.page.text_content("#typing") or "") == ""
    assert await ann.page.locator("#dm-list").get_by_text("renamed1").count() == 1
    assert await ann.page.locator("#dm-list").get_by_text("burst1").count() == 0
    await ann.page.screenshot(path="/tmp/h8-presence-burst.png")

    # Everyone but ann and the watcher leaves at once.
    await close_all([*clients[:2], *clients[3:], late])
    gone = {"-typist", "-renamed1", "-burst3", "-burst4", "-burst5", "-late"}
    frames = await watch.changes(gone)
    assert coalesced(frames), f"the server did not coalesce the burst: {frames}"
    await ann.wait_for(lambda: member_names(ann), ["ann", "watch"])
    assert await header_count(ann) == 2
    await close_all([clients[2], watch.client])


@pytest.mark.timeout(150)
async def test_a_large_room_shows_its_count_and_pages_its_member_list(make_chat, open_page, axe):
    # Hundreds of connections from this one address (the per-address limit is 256).
    server = await make_chat(max_connections_per_ip=0, rate=0)
    port = server.port
    nicks = [f"m{i:03d}" for i in range(530)]
    first = await raw_clients(port, 490)
    for at in range(0, len(first), 100):
        batch = first[at : at + 100]
        await join_all(batch, nicks[at : at + len(batch)], "big")

    # 491 members with ann: a small room, its whole list.
    ann = await open_page(page_url(port), "ann", rooms=["big"])
    await ann.wait_for(lambda: header_count(ann), 491, within=20)
    await ann.wait_for(lambda: ann.page.locator(MEMBER_NAMES).count(), 491)
    assert await foot_text(ann) == ""

    # 30 more in a burst: 521 > 500, the room is large. The header follows the count,
    # the panel shows the first page (ann, then m000...) and how many are not listed.
    more = await raw_clients(port, 30)
    await join_all(more, nicks[490:520], "big")
    await ann.wait_for(lambda: header_count(ann), 521)
    await ann.wait_for(lambda: member_names(ann), ["ann", *nicks[:99]])
    assert await foot_text(ann) == "421 more"
    assert (await ann.page.text_content("#members-count") or "").strip() == "521"
    await ann.page.screenshot(path="/tmp/h8-large-first-page.png")

    # "Show more" reads the next page; the panel keeps at most PANEL_CAP names.
    show_more = ann.page.locator("#members-more")
    for listed in (200, 300, 400, 500):
        await show_more.click()
        await ann.wait_for(lambda: ann.page.locator(MEMBER_NAMES).count(), listed)
        assert await foot_text(ann) == f"{521 - listed} more"
    await ann.page.screenshot(path="/tmp/h8-large-500.png")
    await show_more.click()  # the last 21: the 21 earliest make room
    await ann.wait_for(lambda: member_names(ann), nicks[20:520])
    assert await foot_text(ann) == "21 earlier"
    assert not await show_more.is_visible()
    await ann.page.screenshot(path="/tmp/h8-large-window.png")
    await axe(ann.page, "a large room's member list, paged")
    await ann.page.locator("#members-top").click()
    await ann.wait_for(lambda: member_names(ann), ["ann", *nicks[:99]])

    # The count follows joins (at most once a second in a large room).
    last = await raw_clients(port, 10)
    await join_all(last, nicks[520:530], "big")
    await ann.wait_for(lambda: header_count(ann), 531)
    assert await foot_text(ann) == "431 more"

    # A page opened now gets the large room's first page in its `room` frame.
    bob = await open_page(page_url(port), "bob", rooms=["big"])
    await bob.wait_for(lambda: header_count(bob), 532, within=20)
    await bob.wait_for(lambda: member_names(bob), ["ann", "bob", *nicks[:98]])
    assert await foot_text(bob) == "432 more"
    await ann.wait_for(lambda: header_count(ann), 532)

    # 42 leave at once: 490 members, small again. The pages fetch the whole list.
    await close_all([*more, *last, *first[:2]])
    for who in (ann, bob):
        await who.wait_for(lambda w=who: header_count(w), 490)
        await who.wait_for(lambda w=who: w.page.locator(MEMBER_NAMES).count(), 490)
        assert await foot_text(who) == ""
    names = await member_names(ann)
    assert names == sorted(["ann", "bob", *nicks[2:490]])
    # ...and small-room changes apply to it again.
    await first[2].put(type="leave", room="big")
    await ann.wait_for(lambda: header_count(ann), 489)
    assert "m002" not in await member_names(ann)
    await ann.page.screenshot(path="/tmp/h8-small-again.png")
    await close_all(first[2:])
