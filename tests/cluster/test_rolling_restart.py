"""The upgrade procedure, drilled: nodes behind HAProxy restarted one at a time under traffic.

Real ``hubbub serve`` processes on the machine's PostgreSQL and Redis, Debian's
haproxy with the shipped ``deploy/haproxy.cfg`` (TLS frontend, round robin,
health checks) in front. Clients chat through HAProxy the way the browser and
terminal clients do: on a lost connection they reconnect (to whichever node
HAProxy picks), resume with ``join`` ``since``/``epoch``, and send again every
message not acknowledged yet, with the same client id. Meanwhile each node is
stopped (SIGTERM, the graceful path of an upgrade; or SIGKILL, a crash) and
started again, one after the other. The checker (tests/cluster/checker.py) then
reads every client's log against the history: nothing acknowledged lost,
nothing stored twice, every receiver gapless and in agreement; and presence
converges: every client's member list and ``who`` answer are exactly the clients
connected (a killed node's members are gone once its lease lapsed, a stopped
node's at once).
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import urllib.request
from pathlib import Path

import pytest
import trustme

from tests.deploy.conftest import HaproxyPorts, Proxy, need, render_haproxy
from tests.services import PG_DSN, REDIS_URL

from ..conftest import free_port
from .checker import check
from .drill import DrillClient, Node, presence_converges, settle, shut, wait_for

#: Seconds for every member list to be right after the settle phase: a killed
#: node's members stay listed until its lease lapses and another node removes
#: them (13 s after the kill, docs/presence.md); 4 s of slack.
PRESENCE_WITHIN = 17.0


def haproxy_config(ports: HaproxyPorts, third: int, stats: int, pem: Path) -> str:
    """deploy/haproxy.cfg for three loopback nodes, plus a CSV stats page to watch them."""
    config = render_haproxy(ports, pem)
    node2 = f"server node2 127.0.0.1:{ports.nodes[1]}"
    lines = config.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(node2))
    lines.insert(at + 1, f"    server node3 127.0.0.1:{third} cookie n3")
    config = "\n".join(lines) + "\n"
    return config + f"\nlisten stats\n    bind 127.0.0.1:{stats}\n    stats enable\n" \
        "    stats uri /stats\n"  # fmt: skip


def servers_up(stats_port: int) -> dict[str, str]:
    """HAProxy's view of each node (UP, DOWN, ...), from its CSV stats page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5) as r:
        rows = r.read().decode().splitlines()
    header = rows[0].lstrip("# ").split(",")
    out = {}
    for row in rows[1:]:
        cols = dict(zip(header, row.split(","), strict=False))
        if cols.get("pxname") == "hubbub_nodes" and cols.get("svname", "").startswith("node"):
            out[cols["svname"]] = cols["status"]
    return out


@pytest.fixture
def haproxy_tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    ca = trustme.CA()
    pem = tmp_path / "site.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(pem)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return pem, context


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_restarting_every_node_in_turn_under_traffic_loses_nothing(
    spawn, pg_schema, redis_prefix, tmp_path, haproxy_tls, how
):
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    ports = HaproxyPorts((free_port(), free_port()), free_port(), free_port())
    third, stats = free_port(), free_port()
    nodes = [Node(spawn, port, store, broker) for port in (*ports.nodes, third)]
    pem, tls = haproxy_tls
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(ports, third, stats, pem))
    haproxy = Proxy(
        [need("haproxy"), "-db", "-f", str(config)], tmp_path / "haproxy.log", [ports.https]
    )
    try:
        await wait_for(
            lambda: set(servers_up(stats).values()) == {"UP"}, 30, "haproxy sees 3 nodes up"
        )
        await run_drill(nodes, ports.https, stats, tls, how)
    finally:
        haproxy.stop()


async def run_drill(
    nodes: list[Node], https: int, stats: int, tls: ssl.SSLContext, how: signal.Signals
) -> None:
    clients = [DrillClient(f"c{i}", f"wss://127.0.0.1:{https}/", tls) for i in range(6)]
    stop_reading, stop_sending = asyncio.Event(), asyncio.Event()
    readers = [asyncio.create_task(c.run(stop_reading)) for c in clients]
    await wait_for(lambda: all(c.ws is not None for c in clients), 20, "every client joined")
    senders = [asyncio.create_task(c.send_until(stop_sending, 0.05)) for c in clients]
    try:
        for i, node in enumerate(nodes, 1):
            before = sum(c.connections for c in clients)
            await asyncio.to_thread(node.stop, how)
            await asyncio.to_thread(node.start)
            await wait_for(
                lambda i=i: servers_up(stats).get(f"node{i}") == "UP", 30, f"node{i} back up"
            )
            # Its clients came back through the other nodes (traffic never stopped).
            await wait_for(
                lambda before=before: sum(c.connections for c in clients) > before,
                30,
                f"clients of node{i} reconnected",
            )
        history = await settle(clients, senders, stop_sending, nodes[0].port)
        await presence_converges(clients, PRESENCE_WITHIN, f"after the restarts ({how.name})")
    finally:
        await shut(clients, [*readers, *senders], stop_sending, stop_reading)
    logs = [c.log for c in clients]
    sent = sum(len(log.sent) for log in logs)
    assert len(history) == sent, f"{sent} messages sent, {len(history)} stored"
    assert [m.seq for m in history] == list(range(1, len(history) + 1))
    assert check(logs, history) == []
    assert not any(c.resets for c in clients), [c.resets for c in clients]
    # Everybody was disrupted, and nobody's receive log starts late.
    assert sum(c.connections for c in clients) >= len(clients) + len(nodes)
    for log in logs:
        assert log.received[0].seq == 1 and len(log.received) == len(history), log.name
