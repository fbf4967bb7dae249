"""Fuzz: hubbub.v1 frames over a real WebSocket (valid, near-valid, deep, huge,
garbage text, binary) against the chat app.

Every answer is a JSON server frame of a known type and never an ``internal``
error; the connection answers a final ``ping`` or is closed with a close frame
(never 1011, never a dropped TCP connection); no traceback is logged; a normal
client is served afterwards.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from hubbub import protocol as p

from .live import LiveChat
from .profile import fuzz_settings
from .strategies import VALID_FRAMES, WIRE_TEXTS

WITHIN = 15.0
FRAMES = st.lists(
    WIRE_TEXTS | st.binary(max_size=200) | st.just(b"") | st.just('{"type":"rooms"}'),
    min_size=1,
    max_size=8,
)
#: A session prefix that puts the connection in a room, so later frames reach deeper.
JOINED = st.lists(VALID_FRAMES, max_size=3)


def check_frame(raw: str | bytes) -> dict[str, Any]:
    assert isinstance(raw, str), f"the server sent a binary frame: {raw[:100]!r}"
    frame = json.loads(raw)
    assert isinstance(frame, dict), raw[:200]
    assert frame.get("type") in p.SERVER_TYPES, raw[:200]
    if frame["type"] == "error":
        assert frame["code"] != p.E_INTERNAL, raw[:300]
        assert isinstance(frame["message"], str) and frame["message"], raw[:300]
    return frame


def size(frame: str | bytes) -> int:
    return len(frame.encode() if isinstance(frame, str) else frame)


def session(port: int, frames: list[str | bytes], max_size: int = 1 << 62) -> str:
    """Send ``frames`` then a ping; read until its pong or the close. Returns the outcome."""
    with connect(
        f"ws://127.0.0.1:{port}/",
        subprotocols=[p.SUBPROTOCOL],
        open_timeout=WITHIN,
        close_timeout=WITHIN,
        max_size=None,
    ) as ws:
        assert check_frame(ws.recv(WITHIN))["type"] == "welcome"
        try:
            for frame in frames:
                ws.send(frame)
            ws.send('{"type":"ping","id":"fuzz-end"}')
            while True:
                frame = check_frame(ws.recv(WITHIN))
                if frame["type"] == "pong" and frame.get("id") == "fuzz-end":
                    return "answered"
        except ConnectionClosed as exc:
            # A send can fail before the reader has parsed the server's Close:
            # let the reader finish, then look at what the server sent.
            ws.recv_events_thread.join(WITHIN)
            rcvd = ws.protocol.close_rcvd
            if rcvd is None and any(size(f) > max_size for f in frames):
                # Over max_message_size the server fails the connection (1009)
                # while this client is still sending: the kernel's reset can
                # destroy the Close frame before it is read (see docs/soak-results.md).
                return "dropped after an oversized frame"
            assert rcvd is not None, f"closed without a close frame ({exc})"
            assert rcvd.code != 1011, f"closed with 1011: {rcvd}"
            return f"closed {rcvd.code}"
        except TimeoutError:
            raise AssertionError(f"neither the pong nor a close within {WITHIN}s") from None


@fuzz_settings(80)
@given(JOINED, FRAMES)
@example([], ['{"type":"join","room":"a","since":' + "9" * 400 + "}"])
@example([], ['{"type":"history","room":"lobby","before":18446744073709551616}'])
@example(['{"type":"join","room":"lobby"}'], ['{"type":"join","room":"lobby","since":-1}'])
@example([], ["[" * 5000 + "]" * 5000])
@example([], [b"\x00\xff"] * 12)
def test_websocket_frames(
    live_chat: LiveChat, prefix: list[str], frames: list[str | bytes]
) -> None:
    outcome = session(live_chat.port, [*prefix, *frames], live_chat.settings.max_message_size)
    event(outcome)
    bad = live_chat.tracebacks.take()
    assert not bad, "\n".join(bad)
    assert live_chat.healthy(), "the server stopped answering /healthz"
