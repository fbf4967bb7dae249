"""Real ``hubbub serve`` processes on one PostgreSQL and one Redis (the flags)."""

from __future__ import annotations

import signal

from tests.apps.test_chat import Client
from tests.services import PG_DSN, REDIS_URL

from ..conftest import free_port, serve_args
from .test_nodes import collect


async def test_two_serve_processes_on_one_store_and_broker_are_one_chat(
    spawn, pg_schema, redis_prefix
):
    store = f"{PG_DSN}?schema={pg_schema}"
    broker = f"{REDIS_URL}?prefix={redis_prefix}"
    ports = [free_port(), free_port()]
    procs = [
        spawn(*serve_args(port, "--store", store, "--broker", broker, "--rate", "0"), port=port)
        for port in ports
    ]
    urls = [f"ws://127.0.0.1:{port}/" for port in ports]
    ann = await Client.open(urls[0], "ann", "r")
    bob = await Client.open(urls[1], "bob", "r")
    for i in range(10):
        await ann.send(type="send", room="r", id=f"a{i}", text=f"a{i}")
        await bob.send(type="send", room="r", id=f"b{i}", text=f"b{i}")
    got_ann, got_bob = await collect(ann, 20), await collect(bob, 20)
    assert [m["seq"] for m in got_ann] == list(range(1, 21))
    assert [(m["seq"], m["id"]) for m in got_bob] == [(m["seq"], m["id"]) for m in got_ann]
    for c in (ann, bob):
        await c.close()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_a_bad_store_url_is_one_line(spawn):
    port = free_port()
    proc = spawn(*serve_args(port, "--store", "mysql://x/y"))
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 1
    lines = [line for line in out.splitlines() if line.startswith("hubbub: error")]
    assert lines == [
        "hubbub: error: --store 'mysql://x/y' is not a store URL; use sqlite:///PATH or "
        "postgresql://USER@HOST[:PORT]/DB[?schema=NAME]"
    ], out
