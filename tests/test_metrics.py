"""/metrics over real sockets: protected on the main port, open on --metrics-port,
and counting what actually happened in a chat."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import hubbub
from hubbub import metrics
from hubbub.apps.chat import create_app
from hubbub.config import Settings

from .apps.test_catchup import fill
from .apps.test_chat import Client
from .conftest import free_port
from .services import REDIS_URL, redis_prefix  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-metrics-token"


@pytest.fixture
async def make_ops(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make_ops(**settings)``: the chat of ``hubbub serve`` with its metrics."""
    servers = []

    async def factory(**overrides: Any) -> Any:
        overrides.setdefault("db", str(tmp_path / "hubbub.db"))
        server = create_app("127.0.0.1", 0, Settings(**overrides))
        ops = metrics.install(server)
        await server.listen()
        servers.append(server)
        return server, ops

    yield factory
    for server in servers:
        await server.shutdown()


async def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    writer.write(head.encode() + b"\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, hdrs, body.decode()


async def post(port: int, path: str) -> tuple[int, dict, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), {}, body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(port: int, token: str | None = TOKEN) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, hdrs, body = await get(port, "/metrics", headers)
    assert status == 200, body
    assert hdrs["content-type"].startswith("text/plain; version=")
    return samples(body)


async def test_metrics_on_the_main_port_need_the_token(make_ops):
    server, _ = await make_ops(metrics_token=TOKEN)
    status, hdrs, _ = await get(server.port, "/metrics")
    assert status == 401 and hdrs["www-authenticate"].startswith("Bearer")
    status, _, _ = await get(server.port, "/metrics", {"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, _ = await get(server.port, "/metrics", {"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    got = await scrape(server.port)
    assert value(got, "hubbub_info", version=hubbub.__version__) == 1
    # The chat's own routes still work behind the wrapper.
    status, _, body = await get(server.port, "/readyz")
    assert status == 200 and body == "ready\n"


async def test_no_token_and_no_port_means_no_metrics(make_ops):
    server, ops = await make_ops()
    status, _, body = await get(server.port, "/metrics", {"Authorization": "Bearer "})
    assert status == 404 and "--metrics-token" in body
    assert ops.port_server is None


async def test_metrics_port_is_open_and_only_serves_metrics(make_ops):
    port = free_port()
    server, ops = await make_ops(metrics_port=port)
    assert ops.port_server is not None and ops.port_server.port == port
    got = await scrape(port, token=None)
    assert ("hubbub_connections", (("protocol", "seed"), ("transport", "websocket"))) in got
    status, _, _ = await get(port, "/")
    assert status == 404
    # Not a WebSocket endpoint: a handshake there is refused.
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=5):
            pass
    assert info.value.response.status_code == 503
    status, _, _ = await post(port, "/v1/sessions?transport=poll")  # nor a session
    assert status != 201
    # The main port does not serve them without a token.
    status, _, _ = await get(server.port, "/metrics")
    assert status == 404
    await server.shutdown()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def _wait_for(port: int, check: Callable[[dict], bool], within: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        got = await scrape(port)
        if check(got):
            return got
        assert asyncio.get_running_loop().time() < deadline, "metrics never got there"
        await asyncio.sleep(0.05)


async def test_a_scrape_after_chat_traffic_counts_what_happened(make_ops):
    server, _ = await make_ops(metrics_token=TOKEN, rate=0)
    before = await scrape(server.port)
    ann = await Client.open(server, "ann", "lobby")
    bob = await Client.open(server, "bob", "lobby")
    await ann.expect("joined", nick="bob")
    for i in range(3):
        await ann.send(type="send", room="lobby", id=f"m{i}", text=f"hello {i}")
        await ann.expect("message", seq=i + 1)
        await ann.expect("ack", id=f"m{i}", duplicate=False)
    await ann.send(type="send", room="lobby", id="m0", text="hello 0")  # a retry
    await ann.expect("ack", id="m0", duplicate=True)
    frames = [await bob.expect("message") for _ in range(3)]
    first = frames[0]
    await bob.close()
    await ann.expect("left", nick="bob")
    await ann.send(type="send", room="lobby", id="m3", text="missed")
    await ann.expect("message", seq=4)
    bob = await Client.open(server)
    await bob.join("lobby", "bob", since=1, epoch=first["epoch"])
    got_frames = [await bob.recv() for _ in range(4)]
    assert got_frames[-1]["type"] == "resumed"
    seed = await connect(f"ws://127.0.0.1:{server.port}/")  # a plain client
    await asyncio.wait_for(seed.recv(), 5)
    status, _, body = await post(server.port, "/v1/sessions?transport=poll")
    assert status == 201 and json.loads(body)["protocol"] == "hubbub.v1", body

    def delta(got: dict, name: str, **labels: str) -> float:
        return value(got, name, **labels) - value(before, name, **labels)

    got = await _wait_for(
        server.port, lambda g: delta(g, "hubbub_event_loop_lag_seconds_count") >= 1
    )
    assert delta(got, "hubbub_handshakes_total", protocol="hubbub.v1") == 4  # 3 ws, 1 poll
    assert delta(got, "hubbub_handshakes_total", protocol="seed") == 1
    assert delta(got, "hubbub_messages_stored_total") == 4
    assert delta(got, "hubbub_duplicates_total") == 1
    assert delta(got, "hubbub_journal_commit_seconds_count") >= 1
    assert delta(got, "hubbub_delivery_latency_seconds_count") >= 1
    assert delta(got, "hubbub_resumes_total", outcome="resumed") == 1
    assert delta(got, "hubbub_replayed_messages_total") == 3
    assert value(got, "hubbub_connections", protocol="hubbub.v1", transport="websocket") == 2
    assert value(got, "hubbub_connections", protocol="seed", transport="websocket") == 1
    polls = sum(
        v
        for (name, labels), v in got.items()
        if name == "hubbub_connections"
        and ("protocol", "hubbub.v1") in labels
        and ("transport", "websocket") not in labels
    )
    assert polls == 1, got  # "poll" once connection_info tells it, "sse/poll" until then
    assert value(got, "hubbub_sessions") == 3
    assert value(got, "hubbub_rooms") == 1
    assert value(got, "hubbub_members") == 2
    assert value(got, "hubbub_rooms_known") == 1
    assert value(got, "hubbub_sequencer_messages_total", event="delivered") >= 4
    assert value(got, "hubbub_broker_subscriptions") == 1
    assert value(got, "hubbub_journal_queue_depth") == 0
    assert value(got, "process_resident_memory_bytes") > 0
    for c in (ann, bob):
        await c.close()
    await seed.close()


async def test_a_non_reading_resumer_counts_as_a_slow_consumer(make_ops):
    server, _ = await make_ops(
        metrics_token=TOKEN, rate=0, max_send_buffer=64 * 1024, compression=False, close_timeout=1
    )
    await fill(server.app.store, "big", 6000, 1500)  # ~9 MB: more than the kernel buffers
    before = await scrape(server.port)
    ws = await connect(
        f"ws://127.0.0.1:{server.port}/", subprotocols=["hubbub.v1"], compression=None, max_queue=1
    )
    try:
        await ws.send('{"type":"join","room":"big","nick":"bob","since":0}')

        def dropped(g: dict) -> bool:
            now = value(g, "hubbub_slow_consumers_dropped_total", where="replay")
            return now - value(before, "hubbub_slow_consumers_dropped_total", where="replay") == 1

        got = await _wait_for(server.port, dropped, within=30)
        # Not counted as a completed resume.
        assert value(got, "hubbub_resumes_total", outcome="resumed") == value(
            before, "hubbub_resumes_total", outcome="resumed"
        )
    finally:
        ws.transport.abort()


def test_every_metric_the_dashboard_uses_exists():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [
        t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []) if "expr" in t
    ]
    assert len(exprs) >= 15
    used = set()
    for expr in exprs:
        used.update(re.findall(r"\b((?:hubbub|process)_[a-z0-9_]+)", expr))
    exposed = set()
    for family in text_string_to_metric_families(metrics.scrape().decode()):
        exposed.update(s.name for s in family.samples)
    assert used, exprs
    missing = sorted(used - exposed)
    assert not missing, f"the dashboard uses metrics that no scrape has: {missing}"


def test_hot_path_helpers_count_by_type():
    from hubbub import protocol as p

    def count(name: str, **labels: str) -> float:
        return value(samples(metrics.scrape().decode()), name, **labels)

    before_ack = count("hubbub_frames_out_total", type="ack")
    before_rl = count("hubbub_rate_limited_total", protocol="hubbub.v1")
    before_in = count("hubbub_frames_in_total", type="send")
    before_fan = count("hubbub_frames_out_total", type="message")
    metrics.frame_out(p.Ack("c", "lobby", 1, "e", "id", 1.0, False))
    metrics.frame_out(p.Error(p.E_RATE_LIMITED, "slow down", "send", "lobby", "c"))
    metrics.frame_in(p.Send("lobby", "hi", "c"))
    metrics.fanout(7, 25)
    metrics.fanout(None, 0)
    metrics.closed(1013, None, False)
    metrics.closed(1000, 1001, True)
    metrics.closed(None, None, None)
    assert count("hubbub_frames_out_total", type="ack") == before_ack + 1
    assert count("hubbub_rate_limited_total", protocol="hubbub.v1") == before_rl + 1
    assert count("hubbub_error_frames_total", code=p.E_RATE_LIMITED) >= 1
    assert count("hubbub_frames_in_total", type="send") == before_in + 1
    assert count("hubbub_frames_out_total", type="message") == before_fan + 25
    assert count("hubbub_closes_total", code="1013", by="server") >= 1
    assert count("hubbub_closes_total", code="1001", by="client") >= 1
    assert count("hubbub_closes_total", code="1006", by="abnormal") >= 1


async def test_broker_and_sequencer_counters_with_redis(make_ops, redis_prefix):  # noqa: F811
    server, _ = await make_ops(
        metrics_token=TOKEN, rate=0, broker=f"{REDIS_URL}?prefix={redis_prefix}"
    )
    before = await scrape(server.port)
    ann = await Client.open(server, "ann", "lobby")
    for i in range(3):
        await ann.send(type="send", room="lobby", id=f"r{i}", text="via redis")
    frames = [await ann.recv() for _ in range(6)]  # acks, and messages back through redis
    assert sorted(f["type"] for f in frames) == ["ack"] * 3 + ["message"] * 3

    def through_redis(g: dict) -> bool:
        def d(event: str) -> float:
            return value(g, "hubbub_broker_frames_total", event=event) - value(
                before, "hubbub_broker_frames_total", event=event
            )

        return d("published") >= 3 and d("received") >= 3

    got = await _wait_for(server.port, through_redis)
    assert value(got, "hubbub_broker_subscriptions") == 1
    assert value(got, "hubbub_sequencer_messages_total", event="delivered") >= 3
    await ann.close()


async def test_a_worker_serves_its_metrics_on_its_own_port(make_ops, tmp_path):
    base = free_port()
    server = create_app("127.0.0.1", 0, Settings(db=str(tmp_path / "w.db"), metrics_port=base - 2))
    ops = metrics.install(server, worker=2)
    await server.listen()
    try:
        assert ops.port_server.port == base
        got = await scrape(base, token=None)
        assert value(got, "hubbub_info", version=hubbub.__version__) == 1
    finally:
        await server.shutdown()
