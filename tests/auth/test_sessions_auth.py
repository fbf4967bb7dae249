"""Tokens over the fallback transports (SSE, long polling): the same gate as a
WebSocket, since a session opens with the same events (real sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hubbub import protocol as p

from ..transport.session_clients import SessionGone, SessionRefused, SessionSocket
from .keys import SECRET, token


def base(server: Any) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("kind", ["sse", "poll"])
async def test_a_bearer_header_on_the_session_request(make_chat: Any, kind: str) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    headers = {"Authorization": f"Bearer {token(sub='bob')}"}
    s = await SessionSocket.open(base(server), kind, headers=headers)
    welcome = json.loads(await s.recv())
    assert welcome["type"] == "welcome" and welcome["user"] == "bob"
    await s.close()
    with pytest.raises(SessionRefused) as info:
        await SessionSocket.open(base(server), kind, headers={"Authorization": "Bearer junk"})
    assert info.value.status == 401


async def test_the_auth_frame_over_a_session(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    s = await SessionSocket.open(base(server), "poll")
    await s.send(json.dumps({"type": "auth", "token": token(sub="cat")}))
    welcome = json.loads(await s.recv())
    assert welcome["type"] == "welcome" and welcome["user"] == "cat"
    await s.close()
    s = await SessionSocket.open(base(server), "poll")
    await s.send(json.dumps({"type": "ping"}))
    assert json.loads(await s.recv())["code"] == p.E_AUTH_REQUIRED
    with pytest.raises(SessionGone):
        await s.recv()
    assert s.closed is not None and s.closed.get("code") == p.CLOSE_AUTH_FAILED
    await s.close()
