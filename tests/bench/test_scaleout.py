"""bench/scaleout.py: a tiny run of each scenario on each server it compares (real
``hubbub serve`` processes, the machine's PostgreSQL and Redis), then the report.

Each run checks the result's structure, that every delivery was counted without
loss, that the server's CPU is the sum over its processes (both workers with
``--workers 2``, which the plain generator cannot see), that the clients were
split over the workers, and that the run's schema and Redis keys are gone after.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import redis

from tests.services import PG_START, REDIS_START

from .helpers import ROOT

pytest.importorskip("picows", reason="the bench extra is not installed")

SCALEOUT = ROOT / "bench" / "scaleout.py"
TINY = {"clients": 20, "senders": 2, "window": 4, "size": 100, "duration": 0.6, "warmup": 0.2}


def load_scaleout() -> ModuleType:
    if "bench_scaleout" in sys.modules:
        return sys.modules["bench_scaleout"]
    folder = str(SCALEOUT.parent)  # as when run: its report module is next to it
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("bench_scaleout", SCALEOUT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scaleout"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def so() -> ModuleType:
    module = load_scaleout()
    problems = module.check_services(list(module.CONFIGS.values()))
    if problems:
        pytest.fail(
            "\n".join(problems) + f"\nStart PostgreSQL: {PG_START}\nStart Redis: {REDIS_START}",
            pytrace=False,
        )
    return module


def _schema_exists(dsn: str, schema: str) -> bool:
    async def ask() -> bool:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
                    schema,
                )
            )
        finally:
            await conn.close()

    return asyncio.run(ask())


def _keys(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        return list(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def _run(so: ModuleType, config_name: str, scenario: str, tmp: Path) -> dict[str, Any]:
    """One tiny measurement, with the checks every run must pass, and the clean-up's."""
    config = so.CONFIGS[config_name]
    fields = dict(TINY)
    if so.SCENARIOS[scenario][1]:
        fields["rate"] = 40.0
    server = so.Server(config, tmp)
    try:
        server.start()
        workers = server.workers()
        result = asyncio.run(asyncio.wait_for(so.measure(server, scenario, fields), 60))
        assert server.alive()
        if config.store:
            assert _schema_exists(so.PG_DSN, server.schema)
    finally:
        server.stop()
    assert not _schema_exists(so.PG_DSN, server.schema)
    assert _keys(so.REDIS_URL, server.prefix) == []
    assert len(workers) == config.workers

    assert result["errors"] == [] and result["ok"], result["errors"]
    assert (result["scenario"], result["config"]) == (scenario, config_name)
    assert result["protocol"] == so.SCENARIOS[scenario][0]
    assert result["connected"] == TINY["clients"]
    check = result["check"]
    assert check["lost"] == check["duplicated"] == check["reordered"] == 0
    assert check["malformed"] == check["disconnected"] == check["incomplete"] == 0
    assert result["messages_sent"] > 0
    # Every client received every message sent (the senders included): nothing lost.
    assert check["deliveries"] == check["expected"] == TINY["clients"] * result["messages_sent"]
    assert result["deliveries"] > 0 and result["deliveries_per_s"] > 0
    # The server's CPU is measured (summed over its processes), and so is the generator's.
    assert result["server_cpu_s"] > 0 and result["server_cores"] > 0
    assert result["server_cpu_us_per_delivery"] > 0
    # (The kernel counts CPU time in 10 ms ticks: the generator of a one-second tiny
    # run on a busy machine may read 0; the server's, asserted above, never does.)
    assert result["generator_cores"] >= 0 and result["other_cores"] >= 0
    # Each worker has sockets: the clients were split over the workers.
    assert len(result["worker_sockets"]) == config.workers
    assert all(n > 0 for n in result["worker_sockets"])
    assert sum(result["worker_sockets"]) >= TINY["clients"]
    if so.SCENARIOS[scenario][1]:
        lat = result["latency_ms"]
        assert 0 < lat["count"] <= check["deliveries"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 10_000
    return result


@pytest.mark.parametrize("config_name", ["sqlite", "pg-local", "pg-redis", "pg-redis-2w"])
@pytest.mark.parametrize("scenario", ["chat_fanout", "chat_steady"])
def test_chat_scenarios_count_every_delivery(
    so: ModuleType, config_name: str, scenario: str, tmp_path: Path
) -> None:
    _run(so, config_name, scenario, tmp_path)


@pytest.mark.parametrize("scenario", ["fanout", "steady"])
def test_seed_scenarios_count_every_delivery(so: ModuleType, scenario: str, tmp_path: Path) -> None:
    _run(so, "pg-redis", scenario, tmp_path)


def _burner(seconds: float) -> subprocess.Popen[bytes]:
    """A process that burns ``seconds`` of CPU, prints a line, then sleeps (idle)."""
    code = (
        "import sys, time\n"
        f"end = time.process_time() + {seconds}\n"
        "while time.process_time() < end: pass\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_server_cpu_is_summed_over_its_processes(so: ModuleType) -> None:
    """With --workers 2 the server is several processes: the snapshot's server CPU is the
    sum of theirs (the generator's own --server-pid would see one process only)."""
    procs = [_burner(0.3), _burner(0.6)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"done\n"
        pids = [p.pid for p in procs]
        each = [so.proc.cpu_seconds(pid) for pid in pids]
        assert each[0] >= 0.29 and each[1] >= 0.59
        opts = so.Options(workers=1, generator_cpus=None, progress=False)
        snap = so.ServerGroupGenerator(opts, pids).snap()
        assert snap.server_cpu == pytest.approx(sum(each), abs=0.03)
        assert snap.server_rss is not None and snap.server_rss > 0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_report_and_docs_markers(so: ModuleType, tmp_path: Path) -> None:
    """Results of a tiny run of every scenario become the tables; --docs replaces only the
    text between the markers of the page."""
    results = []
    for config_name, scenario in [
        ("pg-local", "chat_steady"),
        ("pg-redis", "chat_steady"),
        ("pg-redis", "chat_fanout"),
        ("pg-redis-2w", "chat_fanout"),
    ]:
        config = so.CONFIGS[config_name]
        fields = dict(TINY, **({"rate": 40.0} if so.SCENARIOS[scenario][1] else {}))
        results.append(so.run_one(config, scenario, fields, tmp_path, 1, 60.0))
    assert all(r["ok"] for r in results), [r["errors"] for r in results]
    args = argparse.Namespace(
        rounds=1, clients=20, senders=2, rate=40.0, duration=0.6, warmup=0.2, argv=["--quick"]
    )
    text = so.render(results, args)
    assert "### Saturation, chat mode (hubbub.v1, one room)" in text
    assert "### The Redis hop (chat mode, fixed rate)" in text
    assert "| `pg-redis-2w`: --workers 2, PostgreSQL + Redis |" in text
    assert "--workers 2 --metrics-port METRICS_PORT" in text
    assert "hubbub_scaleout_RANDOM" in text
    assert not re.search(r"hubbub_scaleout_[0-9a-f]{10}", text)  # no run's own schema
    rep = sys.modules["scaleout_report"]  # the report module next to bench/scaleout.py
    agg = rep.aggregate(results)[("chat_fanout", "pg-redis-2w")]
    assert agg["ran"] == agg["ok"] == 1 and agg["check"]["lost"] == 0
    assert agg["check"]["deliveries"] == agg["check"]["expected"] > 0

    page = tmp_path / "scaling.md"
    page.write_text("# Scaling\n\nintro\n\n## Scaling out\n\nprose\n")
    so.write_docs(page, text)
    so.write_docs(page, "second")
    body = page.read_text()
    assert body.startswith("# Scaling\n\nintro\n\n## Scaling out\n\nprose\n")
    assert body.count(rep.BEGIN) == body.count(rep.END) == 1
    assert "second" in body and "### Saturation" not in body
