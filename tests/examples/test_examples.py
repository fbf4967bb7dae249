"""The examples of examples/, each run as a real process and driven by a real client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from ..conftest import ROOT, free_port, recv_all, serve_args, wait_for_port

EXAMPLES = ROOT / "examples"
API_KEY = "example-secret"
CLOCK = re.compile(r"^clock: \d\d:\d\d:\d\d$")


async def read_until(
    ws: ClientConnection, done: Callable[[Any], bool], within: float = 5.0
) -> list[Any]:
    """Every message up to and including the first one ``done`` accepts."""
    seen: list[Any] = []

    async def read() -> None:
        while not seen or not done(seen[-1]):
            seen.append(await ws.recv())

    try:
        await asyncio.wait_for(read(), within)
    except TimeoutError:
        raise AssertionError(f"no matching message within {within}s; got {seen}") from None
    return seen


def example(name: str, port: int, *extra: str) -> tuple[str, ...]:
    return (str(EXAMPLES / name), "--host", "127.0.0.1", "--port", str(port), *extra)


async def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, as Ctrl-C would: the example shuts down gracefully and exits 0."""
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 0, out
    return out


# -- timer_room.py ------------------------------------------------------------


async def test_timer_room_clock_and_idle_reminder(spawn):
    port = free_port()
    proc = spawn(*example("timer_room.py", port, "--clock", "0.2", "--idle", "1"), port=port)
    url = f"ws://127.0.0.1:{port}/"
    async with connect(url) as talker:
        assert await recv_all(talker, 1) == ["welcome, you are 1"]
        await talker.send("hi")
        await read_until(talker, lambda m: m == "1: hi")
        async with connect(url) as quiet:
            # The quiet one is nudged (after --idle) and hears the clock meanwhile.
            seen = await read_until(quiet, lambda m: m.startswith("reminder:"))
            assert seen[0] == "welcome, you are 2"
            assert seen[-1] == "reminder: you have been quiet for 1s, say hi!"
            assert sum(bool(CLOCK.match(m)) for m in seen) >= 2, seen
            # The talker's nudge was due before the quiet one's (it joined
            # first): had speaking not cleared it, it would be on the talker's
            # stream ahead of the answer to this message.
            await talker.send("still here")
            seen = await read_until(talker, lambda m: m == "1: still here")
            assert not [m for m in seen if m.startswith("reminder")], seen
            assert sum(bool(CLOCK.match(m)) for m in seen) >= 2, seen
    out = await stop(proc)
    assert "Traceback" not in out


async def test_timer_room_countdown_tick_clears_itself(spawn):
    port = free_port()
    proc = spawn(*example("timer_room.py", port, "--clock", "0.2", "--idle", "60"), port=port)
    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        assert await recv_all(ws, 1) == ["welcome, you are 1"]
        await ws.send("/countdown 99")
        await read_until(ws, lambda m: m == "error: /countdown N, N from 1 to 10")
        await ws.send("/countdown 2")
        await ws.send("/countdown 2")
        seen = await read_until(ws, lambda m: m == "countdown: 1")
        assert [m for m in seen if not CLOCK.match(m)] == [
            "error: a countdown is already running",
            "countdown: 2",
            "countdown: 1",
        ]
        # Had the tick not been cleared, "countdown: 0" would come 1 s after
        # "countdown: 1", before the 7th clock line (>= 1.2 s later).
        clocks = 0

        def seventh_clock(m: str) -> bool:
            nonlocal clocks
            clocks += bool(CLOCK.match(m))
            return clocks == 7

        seen = await read_until(ws, seventh_clock)
        assert all(CLOCK.match(m) for m in seen), seen
        # A new countdown may start once the last one ended.
        await ws.send("/countdown 1")
        await read_until(ws, lambda m: m == "countdown: 1")
    out = await stop(proc)
    assert "Traceback" not in out


# -- task_offload.py ----------------------------------------------------------

# A prime: trial division runs to its square root, about half a second of a worker.
BIG_PRIME = 99999999999973


async def test_task_offload_answers_while_the_loop_serves_others(spawn):
    port = free_port()
    proc = spawn(*example("task_offload.py", port, "--workers", "2"), port=port)
    url = f"ws://127.0.0.1:{port}/"
    async with connect(url) as a, connect(url) as b:
        await a.send("factor 360")
        assert await recv_all(a, 2, 10) == ["working: factor 360", "factor 360 = 2^3 * 3^2 * 5"]
        await a.send(f"factor {BIG_PRIME}")
        assert await recv_all(a, 1) == [f"working: factor {BIG_PRIME}"]
        result = asyncio.ensure_future(a.recv())
        # The worker is busy with a's number; the event loop must not be:
        # b completes several round trips before a's answer arrives. (Were
        # the work done in the loop, b's first pong would come after it.)
        for _ in range(3):
            await b.send("ping")
            assert await recv_all(b, 1) == ["pong"]
        assert not result.done()
        assert await asyncio.wait_for(result, 10) == f"factor {BIG_PRIME} = {BIG_PRIME}"
        await a.send("factor 1")
        await a.send("factor 1000000000000001")
        await a.send("nonsense")
        assert await recv_all(a, 3) == [
            "error: factor N, with 1 < N <= 1000000000000000",
            "error: factor N, with 1 < N <= 1000000000000000",
            "error: commands are: ping, factor N, hash TEXT",
        ]
    out = await stop(proc)
    # (Only up to "stopped": CPython 3.11 may print an OSError from the
    # process pool's atexit hook after a shutdown(wait=False), in server.py.)
    assert "Traceback" not in out.partition("hubbub stopped")[0]


async def test_task_offload_callback_form_lets_the_client_go_on(spawn):
    port = free_port()
    proc = spawn(*example("task_offload.py", port, "--workers", "2"), port=port)
    def expected(text: str) -> str:  # the example's key derivation, computed here
        return hashlib.pbkdf2_hmac("sha256", text.encode(), b"hubbub-example", 500_000).hex()

    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        # The handler returns at once: the same client's ping is answered
        # while the hash is computed.
        await ws.send("hash hello world")
        await ws.send("ping")
        assert await recv_all(ws, 2, 10) == ["pong", f"hash hello world: {expected('hello world')}"]
        # At most 4 hashes in flight per connection; the 5th is refused.
        for i in range(5):
            await ws.send(f"hash {i}")
        answers = await recv_all(ws, 5, 10)
        assert answers[0] == "error: busy, 4 hashes running"
        assert sorted(answers[1:]) == [f"hash {i}: {expected(str(i))}" for i in range(4)]
    out = await stop(proc)
    assert "Traceback" not in out.partition("hubbub stopped")[0]


# -- http_bot.py --------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hubbub serve` with an API key, shared by the bot's tests (each uses its own room)."""
    port = free_port()
    db = tmp_path_factory.mktemp("hub") / "hubbub.db"
    proc = subprocess.Popen(
        [sys.executable, *serve_args(port, "--db", str(db), "--api-key", API_KEY)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def history(base: str, room: str) -> list[dict[str, Any]]:
    status, body = await asyncio.to_thread(get_json, f"{base}/api/rooms/{room}/messages")
    assert status == 200, body
    return body["messages"]


async def run_bot(*args: str, stdin: str = "", within: float = 10) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "http_bot.py"),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_http_bot_posts_an_argument_and_stdin_lines(hub):
    code, out, err = await run_bot(
        "--url", hub, "--room", "ops", "--api-key", API_KEY, "deploy", "done"
    )
    assert (code, out, err) == (0, "posted to #ops as seq 1\n", "")
    code, out, err = await run_bot(
        "--url", hub, "--room", "ops", "--nick", "uptime", "--api-key", API_KEY,
        stdin="load 0.1\n\nload 0.2\n",
    )  # fmt: skip
    assert (code, out, err) == (0, "posted to #ops as seq 2\nposted to #ops as seq 3\n", "")
    messages = await history(hub, "ops")
    assert [(m["seq"], m["nick"], m["text"]) for m in messages] == [
        (1, "bot", "deploy done"),
        (2, "uptime", "load 0.1"),
        (3, "uptime", "load 0.2"),
    ]
    assert len({m["client_id"] for m in messages}) == 3


class FlakyProxy:
    """An HTTP proxy in front of hubbub that misbehaves on the first POSTs.

    ``plan`` says what each request gets: "lost" (forwarded to hubbub, which
    stores the message, but the answer is dropped: the connection closes
    without a response), "busy" (a 503 from the proxy) or "pass".
    """

    def __init__(self, upstream_port: int, plan: list[str]) -> None:
        self.upstream_port = upstream_port
        self.plan = plan
        self.bodies: list[bytes] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    @staticmethod
    async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        body = await reader.readexactly(int(length.group(1))) if length else b""
        return head, body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, body = await asyncio.wait_for(self.read_message(reader), 5)
            self.bodies.append(body)
            what = self.plan[len(self.bodies) - 1] if len(self.bodies) <= len(self.plan) else "pass"
            if what == "busy":
                answer = b'{"error":"busy"}'
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer)
                )
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            try:
                up_writer.write(head + body)
                response = await asyncio.wait_for(self.read_message(up_reader), 5)
            finally:
                up_writer.close()
            if what == "pass":
                writer.write(b"".join(response))
            # "lost": stored upstream, but the client never hears of it.
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_http_bot_retries_with_the_same_id_and_is_stored_once(hub):
    proxy = FlakyProxy(int(hub.rsplit(":", 1)[1]), ["lost", "busy", "pass"])
    port = await proxy.start()
    try:
        code, out, err = await run_bot(
            "--url", f"http://127.0.0.1:{port}", "--room", "retry", "--api-key", API_KEY,
            "--backoff", "0.05", "hello once",
        )  # fmt: skip
    finally:
        await proxy.close()
    assert code == 0, err
    assert out == "posted to #retry as seq 1 (already stored: a retry)\n"
    assert err.count("retrying in") == 2
    assert "HTTP 503: busy" in err
    # Three attempts, one id; hubbub stored the message once.
    payloads = [json.loads(body) for body in proxy.bodies]
    assert len(payloads) == 3 and len({p["id"] for p in payloads}) == 1
    messages = await history(hub, "retry")
    assert [(m["text"], m["client_id"]) for m in messages] == [("hello once", payloads[0]["id"])]


async def test_http_bot_does_not_retry_a_refused_key(hub):
    code, out, err = await run_bot("--url", hub, "--room", "nokey", "--api-key", "wrong", "hi")
    assert (code, out) == (1, "")
    assert err == "not posted: HTTP 403: invalid api key\n"
    status, body = await asyncio.to_thread(get_json, f"{hub}/api/rooms")
    assert status == 200 and "nokey" not in [r["name"] for r in body["rooms"]]


async def test_http_bot_gives_up_on_an_unreachable_server():
    nothing = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_bot(
        "--url", nothing, "--api-key", API_KEY, "--retries", "2", "--backoff", "0.01", "hi"
    )
    assert (code, out) == (1, "")
    assert err.count("retrying in") == 2
    assert "not posted: gave up after 3 attempts, last:" in err
    assert "Traceback" not in err


async def test_http_bot_needs_a_key(monkeypatch):
    monkeypatch.delenv("HUBBUB_API_KEY", raising=False)
    code, _, err = await run_bot("--url", "http://127.0.0.1:1", "hi")
    assert code == 2 and "an API key is needed" in err


# -- ws_bot.py ----------------------------------------------------------------


class Relay:
    """A TCP relay between the bot and hubbub that the test can cut and restore."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(
            self.handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        """Stop listening and drop every relayed connection."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def v1_send(ws: ClientConnection, text: str, msg_id: str) -> None:
    await ws.send(json.dumps({"type": "send", "room": "bots", "id": msg_id, "text": text}))


def frame_is(kind: str, **fields: Any) -> Callable[[str], bool]:
    """A read_until condition: a hubbub.v1 frame of this type with these fields."""

    def done(raw: str) -> bool:
        frame = json.loads(raw)
        return frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items())

    return done


async def test_ws_bot_answers_and_resumes_after_a_lost_connection(spawn, tmp_path):
    port = free_port()
    spawn(*serve_args(port, "--db", str(tmp_path / "h.db"), "--api-key", API_KEY), port=port)
    relay = Relay(port)
    await relay.open()
    async with connect(f"ws://127.0.0.1:{port}/", subprotocols=["hubbub.v1"]) as ann:
        await ann.send(json.dumps({"type": "join", "room": "bots", "nick": "ann"}))
        await read_until(ann, frame_is("room"))
        bot = spawn(
            str(EXAMPLES / "ws_bot.py"), "--url", f"ws://127.0.0.1:{relay.port}/",
            "--room", "bots", "--max-delay", "0.2",
        )  # fmt: skip
        await read_until(ann, frame_is("joined", nick="bot"))
        await v1_send(ann, "!roll 3d6", "c-1")
        text = json.loads((await read_until(ann, frame_is("message", nick="bot")))[-1])["text"]
        roll = re.fullmatch(r"ann rolled 3d6: (\d) \+ (\d) \+ (\d) = (\d+)", text)
        assert roll, text
        dice = [int(d) for d in roll.groups()]
        assert all(1 <= d <= 6 for d in dice[:3]) and sum(dice[:3]) == dice[3]
        await v1_send(ann, "!echo one", "c-2")
        await read_until(ann, frame_is("message", nick="bot", text="one"))

        # The bot loses its connection; a command arrives while it is away.
        await relay.cut()
        await read_until(ann, frame_is("left", nick="bot"))
        await v1_send(ann, "!echo while you were away", "c-3")
        await relay.open()
        # It reconnects, resumes after the last seq it saw and answers.
        away = frame_is("message", nick="bot", text="while you were away")
        await read_until(ann, away, within=8)
    messages = await history(f"http://127.0.0.1:{port}", "bots")
    replies = [m["text"] for m in messages if m["nick"] == "bot"]
    assert replies[1:] == ["one", "while you were away"]  # each answered once
    assert bot.poll() is None
