"""The session state machine without sockets: numbering, ack, retransmit, bounds, timeouts.

:class:`FrameBuffer` is pure state; :class:`Session` is driven with a fake
endpoint (what it reports is recorded) and fake carriers (what they were given).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hubbub.config import Settings
from hubbub.transport.messages import Request
from hubbub.transport.session import FrameBuffer, Session, idle_limit


def test_frames_are_numbered_from_one_and_forgotten_once_acknowledged():
    buf = FrameBuffer(limit=100)
    assert [buf.push(b"a"), buf.push(b"bb"), buf.push(b"ccc")] == [1, 2, 3]
    assert buf.since(0) == [(1, b"a"), (2, b"bb"), (3, b"ccc")]
    assert buf.since(2) == [(3, b"ccc")]
    buf.ack(2)
    assert (buf.acked, buf.size) == (2, 3)
    assert buf.since(2) == [(3, b"ccc")]
    # A lost answer is fetched again with the same `after`: nothing is lost.
    assert buf.since(2) == [(3, b"ccc")]
    assert buf.valid(2) and buf.valid(3)
    assert not buf.valid(1)  # frame 2 is forgotten: cannot give "everything after 1"
    assert not buf.valid(4)  # never sent
    buf.ack(3)
    assert buf.since(3) == [] and buf.size == 0


def test_unsent_bytes_are_counted_and_a_stream_resumes_after_its_last_event_id():
    buf = FrameBuffer(limit=100)
    for data in (b"1", b"22", b"333"):
        buf.push(data)
    assert buf.unsent == 6
    assert buf.take_unsent() == [(1, b"1"), (2, b"22"), (3, b"333")]
    assert (buf.unsent, buf.sent) == (0, 3)
    assert buf.take_unsent() == []  # never twice
    buf.push(b"4444")
    # The stream died after the client saw frame 1: a new one replays 2, 3, 4.
    buf.rewind(1)
    assert buf.unsent == 9
    assert buf.take_unsent() == [(2, b"22"), (3, b"333"), (4, b"4444")]


def test_trim_forgets_only_sent_frames_oldest_first():
    buf = FrameBuffer(limit=10)
    for _ in range(4):
        buf.push(b"xxxx")
    assert buf.trim() == 0  # nothing sent: nothing may go
    buf.take_unsent()
    buf.push(b"yyyy")  # unsent
    assert buf.trim() == 3  # 20 bytes -> the two newest (one sent, one not) fit 10
    assert (buf.first, buf.size, buf.unsent) == (4, 8, 4)
    assert not buf.valid(2) and buf.valid(3)


def test_clear_keeps_the_numbering():
    buf = FrameBuffer(limit=10)
    buf.push(b"a")
    buf.push(b"b")
    buf.clear()
    assert (buf.size, buf.unsent, buf.acked) == (0, 0, 2)
    assert buf.push(b"c") == 3


def test_idle_limit_is_the_heartbeat_of_a_websocket():
    assert idle_limit(20, 20, 25) == 40
    assert idle_limit(0, 20, 25) == 60  # heartbeat off: sessions still end


class FakeEndpoint:
    def __init__(self, **overrides: Any) -> None:
        self.settings = Settings(**overrides)
        self.events: list[tuple[str, int]] = []

    def session_closing(self, session: Session) -> None:
        self.events.append(("closing", session.fd))

    def session_closed(self, session: Session) -> None:
        self.events.append(("closed", session.fd))

    def mark_dirty(self, session: Session) -> None:
        asyncio.get_running_loop().call_soon(session.flush_out)


class FakeStream:
    def __init__(self, unread: int = 0) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.finished: tuple[str | None, Any] | None = None
        self.unread = unread

    def write_frames(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames += frames

    def finish(self, event: str | None, data: Any) -> None:
        self.finished = (event, data)

    def buffered(self) -> int:
        return self.unread


def make_session(kind: str, **overrides: Any) -> tuple[Session, FakeEndpoint]:
    endpoint = FakeEndpoint(**overrides)
    request = Request("POST", "/v1/sessions", "", {}, b"", ("127.0.0.1", 1))
    request.subprotocol = "hubbub.v1"
    return Session(endpoint, 7, "sid", kind, request), endpoint  # type: ignore[arg-type]


async def next_tick() -> None:
    await asyncio.sleep(0)


async def test_a_stream_gets_each_frame_once_in_order_and_a_new_one_the_rest():
    session, _ = make_session("sse")
    one = FakeStream()
    assert session.attach_stream(one, 0)
    for text in ("a", "b", "c"):
        assert session.send(text)
    await next_tick()  # one write per tick
    assert one.frames == [(1, b"a"), (2, b"b"), (3, b"c")]
    # A second stream (Last-Event-ID: 1) replaces the first and gets 2, 3 again.
    two = FakeStream()
    assert session.attach_stream(two, 1)
    assert one.finished == (None, None)
    assert two.frames == [(2, b"b"), (3, b"c")]
    session.send("d")
    await next_tick()
    assert two.frames[-1] == (4, b"d") and len(one.frames) == 3


async def test_a_stream_cannot_resume_from_frames_already_forgotten():
    session, _ = make_session("sse", max_send_buffer=8)
    stream = FakeStream()
    session.attach_stream(stream, 0)
    for _ in range(4):
        session.send("xxxx")
        await next_tick()
    assert session.buffer.first == 3  # the replay window keeps 8 bytes
    session.detach_stream(stream)
    assert not session.attach_stream(FakeStream(), 1)
    assert session.attach_stream(FakeStream(), 2)


async def test_a_poll_session_over_the_buffer_is_dropped_with_1013():
    session, endpoint = make_session("poll", max_send_buffer=10)
    assert session.send("12345")
    assert session.send("12345")
    assert session.open and session.get_write_buffer_size() == 10
    session.send("x")
    assert not session.open and session.close_info == (1013, "send buffer overflow")
    assert session.buffer.size == 0  # the frames are dropped, not kept
    assert ("closing", 7) in endpoint.events
    assert not session.send("more")


async def test_an_sse_client_that_does_not_read_is_dropped_with_1013():
    session, _ = make_session("sse", max_send_buffer=100)
    stream = FakeStream(unread=101)
    session.attach_stream(stream, 0)
    session.send("x")
    assert session.close_info == (1013, "send buffer overflow")
    assert stream.finished is not None and stream.finished[0] == "close"
    assert stream.finished[1]["code"] == 1013


async def test_a_poll_acknowledges_answers_and_waits_for_frames():
    session, _ = make_session("poll")
    loop = asyncio.get_running_loop()
    session.send("w")
    frames, last, closed = await session.wait_poll(0, 5, loop.create_future())
    assert (frames, last, closed) == ([(1, b"w")], 1, None)
    waiting = asyncio.ensure_future(session.wait_poll(1, 5, loop.create_future()))
    await next_tick()
    assert session.buffer.size == 0  # after=1 acknowledged frame 1
    session.send("x")
    session.send("y")
    assert await asyncio.wait_for(waiting, 2) == ([(2, b"x"), (3, b"y")], 3, None)


async def test_a_poll_times_out_empty_and_a_second_poll_ends_the_first():
    session, _ = make_session("poll")
    loop = asyncio.get_running_loop()
    assert await session.wait_poll(0, 0.01, loop.create_future()) == ([], 0, None)
    first = asyncio.ensure_future(session.wait_poll(0, 5, loop.create_future()))
    await next_tick()
    second = asyncio.ensure_future(session.wait_poll(0, 5, loop.create_future()))
    assert await asyncio.wait_for(first, 2) == ([], 0, None)
    session.send("z")
    assert await asyncio.wait_for(second, 2) == ([(1, b"z")], 1, None)


async def test_a_closed_session_gives_its_last_frames_then_the_close():
    session, endpoint = make_session("poll")
    loop = asyncio.get_running_loop()
    session.send("bye")
    session.close(4000, "go away")
    assert ("closed", 7) not in endpoint.events  # kept for its client for a while
    result = await session.wait_poll(0, 5, loop.create_future())
    assert result == ([(1, b"bye")], 1, (4000, "go away"))
    assert endpoint.events == [("closing", 7), ("closed", 7)]


async def test_a_session_with_no_poll_and_no_stream_expires():
    session, endpoint = make_session("poll", ping_interval=0.05, ping_timeout=0.05)
    loop = asyncio.get_running_loop()
    poll = asyncio.ensure_future(session.wait_poll(0, 0.3, loop.create_future()))
    await asyncio.sleep(0.15)  # longer than the idle limit, but a poll is waiting
    assert session.open
    await poll
    for _ in range(100):
        if session.closed:
            break
        await asyncio.sleep(0.02)
    assert session.closed and endpoint.events == [("closing", 7), ("closed", 7)]


async def test_a_closed_session_nobody_fetches_is_forgotten_after_close_timeout():
    session, endpoint = make_session("sse", close_timeout=0.05)
    session.close(1000, "")
    for _ in range(100):
        if session.closed:
            break
        await asyncio.sleep(0.02)
    assert endpoint.events == [("closing", 7), ("closed", 7)]


@pytest.mark.parametrize("kind", ["sse", "poll"])
async def test_hold_makes_posts_wait_until_release(kind):
    session, _ = make_session(kind)
    session.hold(2)
    waiter = asyncio.ensure_future(session.wait_released())
    await next_tick()
    assert not waiter.done()
    session.release(2)
    await asyncio.wait_for(waiter, 1)


def test_session_ids_are_redacted_from_paths():
    from hubbub.transport.session_routes import redact_path

    assert redact_path("/v1/sessions/abc/events") == "/v1/sessions/<redacted>/events"
    assert redact_path("/v1/sessions/abc") == "/v1/sessions/<redacted>"
    assert redact_path("/v1/sessions/abc/") == "/v1/sessions/<redacted>/"
    assert redact_path("/v1/sessions") == "/v1/sessions"
    assert redact_path("/v1/sessions/") == "/v1/sessions/"
    assert redact_path("/v1/sessionsabc/x") == "/v1/sessionsabc/x"
    assert redact_path("/api/rooms") == "/api/rooms"
    # Extra slashes: the router still finds the id (so must the redaction).
    assert redact_path("/v1/sessions//abc/poll") == "/v1/sessions/<redacted>/poll"
    assert redact_path("/v1/sessions///abc") == "/v1/sessions/<redacted>"
