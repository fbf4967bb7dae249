"""Presenting a token to a running server (real sockets): the Authorization header on
the upgrade, the first-frame ``auth``, the auth modes, and token expiry."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hubbub import protocol as p
from hubbub.errors import StartupError

from ..conftest import ws_url
from .keys import SECRET, ec_key, jwks, public_pem, rsa_key, token


async def v1(server: Any, tok: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {tok}"} if tok else None
    return await connect(ws_url(server), subprotocols=[p.SUBPROTOCOL], additional_headers=headers)


async def recv(ws: Any, within: float = 5.0) -> dict[str, Any]:
    import asyncio

    return json.loads(await asyncio.wait_for(ws.recv(), within))


async def until(ws: Any, kind: str) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv(ws)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def rest(ws: Any, within: float = 10.0) -> list[dict[str, Any]]:
    """Every frame until the server closes (bounded by ``within`` per frame)."""
    frames = []
    try:
        for _ in range(50):
            frames.append(await recv(ws, within))
    except ConnectionClosed:
        return frames
    raise AssertionError("the server did not close")


async def refused_status(server: Any, tok: str | None, subprotocols: Any = (p.SUBPROTOCOL,)) -> Any:
    headers = {"Authorization": f"Bearer {tok}"} if tok else None
    with pytest.raises(InvalidStatus) as info:
        await connect(
            ws_url(server), subprotocols=list(subprotocols) or None, additional_headers=headers
        )
    return info.value.response


async def test_header_token_gets_a_welcome_with_the_user(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server, token(name="Ann"))
    welcome = await recv(ws)
    assert welcome["type"] == "welcome" and welcome["user"] == "ann" and welcome["nick"] == "Ann"
    await ws.send(json.dumps({"type": "join", "room": "lobby"}))
    assert (await until(ws, "room"))["nick"] == "Ann"
    await ws.close()


@pytest.mark.parametrize("kind", ["rs", "es", "jwks"])
async def test_public_key_tokens(make_chat: Any, tmp_path: Path, kind: str) -> None:
    key = rsa_key() if kind == "rs" else ec_key()
    alg = "RS256" if kind == "rs" else "ES256"
    if kind == "jwks":
        path = jwks(tmp_path / "k.json", main=key)
    else:
        path = public_pem(key, tmp_path / "k.pem")
    server = await make_chat(auth="token", jwt_public_key=path)
    ws = await v1(server, token(key, alg, kid="main"))
    assert (await recv(ws))["user"] == "ann"
    await ws.close()
    resp = await refused_status(server, token(SECRET))  # an HS token against a public key
    assert resp.status_code == 401 and b"HS256" in resp.body


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"exp": int(time.time()) - 60}, b"expired"),
        ({"nbf": int(time.time()) + 600}, b"not valid yet"),
        ({"aud": "elsewhere"}, b"aud"),
    ],
)
async def test_bad_header_tokens_get_401_with_the_reason(
    make_chat: Any, claims: dict[str, Any], words: bytes
) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET, jwt_audience="hubbub")
    tok = token(**{"aud": "hubbub", **claims})
    resp = await refused_status(server, tok)
    assert resp.status_code == 401 and words in resp.body
    assert tok.encode() not in resp.body


async def test_a_header_that_is_not_bearer_is_refused(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    with pytest.raises(InvalidStatus) as info:
        await connect(
            ws_url(server),
            subprotocols=[p.SUBPROTOCOL],
            additional_headers={"Authorization": "Basic YTpi"},
        )
    assert info.value.response.status_code == 401


async def test_first_frame_auth(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server)
    await ws.send(json.dumps({"type": "auth", "token": token(sub="bob")}))
    welcome = await recv(ws)
    assert welcome["type"] == "welcome" and welcome["user"] == "bob"
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv(ws))["type"] == "pong"
    # A second auth is not the first frame: the core says so.
    await ws.send(json.dumps({"type": "auth", "token": token(sub="bob")}))
    assert (await recv(ws))["code"] == p.E_BAD_FRAME
    await ws.close()


@pytest.mark.parametrize(
    "first",
    [
        json.dumps({"type": "join", "room": "lobby"}),
        "not json",
        b"\x00binary",
        json.dumps({"type": "auth"}),
    ],
)
async def test_any_other_first_frame_gets_auth_required_and_4401(
    make_chat: Any, first: Any
) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server)
    await ws.send(first)
    frames = await rest(ws)
    assert [f["code"] for f in frames] == [p.E_AUTH_REQUIRED]
    assert ws.close_code == p.CLOSE_AUTH_FAILED


async def test_a_bad_auth_frame_gets_auth_failed_and_4401(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server)
    await ws.send(json.dumps({"type": "auth", "token": token("x" * 40)}))
    frames = await rest(ws)
    assert [f["code"] for f in frames] == [p.E_AUTH_FAILED]
    assert "signature" in frames[0]["message"]
    assert ws.close_code == p.CLOSE_AUTH_FAILED


async def test_an_expired_auth_frame_gets_token_expired_and_4402(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server)
    await ws.send(json.dumps({"type": "auth", "token": token(exp=int(time.time()) - 60)}))
    frames = await rest(ws)
    assert [f["code"] for f in frames] == [p.E_TOKEN_EXPIRED]
    assert ws.close_code == p.CLOSE_TOKEN_EXPIRED


async def test_no_auth_within_the_timeout_closes_with_4401(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET, auth_timeout=0.3)
    ws = await v1(server)
    frames = await rest(ws)
    assert [f["code"] for f in frames] == [p.E_AUTH_REQUIRED]
    assert "within" in frames[0]["message"]
    assert ws.close_code == p.CLOSE_AUTH_FAILED


async def test_a_token_that_expires_mid_connection_closes_with_4402(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    # exp is a whole second; with the 5 s leeway the close comes 5-7 s from now.
    ws = await v1(server, token(exp=int(time.time()) + 1))
    assert (await recv(ws))["type"] == "welcome"
    await ws.send(json.dumps({"type": "join", "room": "lobby"}))
    assert (await until(ws, "room"))["room"] == "lobby"
    frames = await rest(ws, within=15)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == p.E_TOKEN_EXPIRED
    assert ws.close_code == p.CLOSE_TOKEN_EXPIRED
    assert not server.app.gate.identities  # its timer and state are gone


async def test_closing_clears_the_expiry_timer(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server, token(ttl=3600))
    assert (await recv(ws))["type"] == "welcome"
    gate = server.app.gate
    ((_, timer),) = gate.identities.values()
    assert timer and timer in server._timers._timers
    await ws.close()
    for _ in range(100):
        if not gate.identities:
            break
        import asyncio

        await asyncio.sleep(0.02)
    assert not gate.identities and timer not in server._timers._timers


async def test_seed_clients_are_refused_in_token_mode(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    resp = await refused_status(server, None, subprotocols=())
    assert resp.status_code == 401 and b"requires a token" in resp.body


async def test_seed_clients_come_in_with_allow_anonymous_seed(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET, allow_anonymous_seed=True)
    ws = await connect(ws_url(server))
    assert await ws.recv() == "Hello, welcome\n"
    await ws.close()


async def test_guests_in_optional_mode_read_but_do_not_write(make_chat: Any) -> None:
    server = await make_chat(auth="optional", jwt_secret=SECRET)
    ann = await v1(server, token(name="Ann"))
    assert (await recv(ann))["user"] == "ann"
    await ann.send(json.dumps({"type": "join", "room": "lobby"}))
    await until(ann, "room")
    guest = await v1(server)
    welcome = await recv(guest)
    assert welcome["nick"].startswith("guest-") and welcome["user"] == welcome["nick"]
    await guest.send(json.dumps({"type": "join", "room": "lobby"}))
    await until(guest, "room")
    await guest.send(json.dumps({"type": "send", "room": "lobby", "id": "g1", "text": "hi"}))
    assert (await until(guest, "error"))["code"] == p.E_READ_ONLY
    await ann.send(json.dumps({"type": "send", "room": "lobby", "id": "a1", "text": "hello"}))
    got = await until(guest, "message")
    assert got["text"] == "hello"
    await ann.close()
    await guest.close()


async def test_guests_may_write_with_guest_write(make_chat: Any) -> None:
    server = await make_chat(auth="optional", jwt_secret=SECRET, guest_write=True)
    guest = await v1(server)
    await recv(guest)
    await guest.send(json.dumps({"type": "join", "room": "lobby"}))
    await until(guest, "room")
    await guest.send(json.dumps({"type": "send", "room": "lobby", "id": "g1", "text": "hi"}))
    assert (await until(guest, "ack"))["id"] == "g1"
    await guest.close()


async def test_an_auth_frame_first_turns_a_guest_into_its_user(make_chat: Any) -> None:
    server = await make_chat(auth="optional", jwt_secret=SECRET)
    ws = await v1(server)
    assert (await recv(ws))["nick"].startswith("guest-")
    await ws.send(json.dumps({"type": "auth", "token": token(name="Ann")}))
    welcome = await recv(ws)
    assert welcome["type"] == "welcome" and welcome["user"] == "ann" and welcome["nick"] == "Ann"
    await ws.send(json.dumps({"type": "join", "room": "lobby"}))
    await until(ws, "room")
    await ws.send(json.dumps({"type": "send", "room": "lobby", "id": "a1", "text": "hi"}))
    assert (await until(ws, "ack"))["id"] == "a1"  # no longer a read-only guest
    await ws.close()


async def test_a_bad_auth_frame_in_optional_mode_closes(make_chat: Any) -> None:
    server = await make_chat(auth="optional", jwt_secret=SECRET)
    ws = await v1(server)
    await recv(ws)
    await ws.send(json.dumps({"type": "auth", "token": "garbage"}))
    frames = await rest(ws)
    assert [f["code"] for f in frames] == [p.E_AUTH_FAILED]
    assert ws.close_code == p.CLOSE_AUTH_FAILED


async def test_none_mode_without_keys_answers_auth_and_goes_on(make_chat: Any) -> None:
    server = await make_chat()
    ws = await v1(server, "ignored-header")
    welcome = await recv(ws)
    assert welcome["nick"].startswith("user-") and "user" not in welcome
    await ws.send(json.dumps({"type": "auth", "token": token()}))
    err = await recv(ws)
    assert err["code"] == p.E_AUTH_FAILED and "no tokens" in err["message"]
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv(ws))["type"] == "pong"
    await ws.close()


async def test_none_mode_with_a_key_verifies_tokens(make_chat: Any) -> None:
    server = await make_chat(jwt_secret=SECRET)
    anon = await v1(server)
    assert "user" not in await recv(anon)
    ws = await v1(server, token())
    assert (await recv(ws))["user"] == "ann"
    assert (await refused_status(server, token("y" * 40))).status_code == 401
    await ws.close()
    await anon.close()


async def test_a_token_for_other_rooms_cannot_join(make_chat: Any) -> None:
    server = await make_chat(auth="token", jwt_secret=SECRET)
    ws = await v1(server, token(rooms=["dev"]))
    await recv(ws)
    await ws.send(json.dumps({"type": "join", "room": "lobby"}))
    assert (await until(ws, "error"))["code"] == p.E_FORBIDDEN
    await ws.send(json.dumps({"type": "join", "room": "dev"}))
    assert (await until(ws, "room"))["room"] == "dev"
    await ws.close()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"auth": "token"}, "needs a key"),
        ({"auth": "optional"}, "needs a key"),
        ({"auth": "token", "jwt_secret": "short"}, "at least 32"),
    ],
)
async def test_start_up_refuses_a_missing_or_short_key(
    make_chat: Any, overrides: dict[str, Any], words: str, monkeypatch: Any
) -> None:
    monkeypatch.delenv("HUBBUB_JWT_SECRET", raising=False)
    with pytest.raises(StartupError, match=words):
        await make_chat(**overrides)
