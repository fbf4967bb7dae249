"""bench/scaleout.py: a tiny run of each scenario on the servers it compares (real
``hubbub serve`` processes, the machine's PostgreSQL and Redis), then the report.

Each window is checked: its structure, every delivery counted without loss, the
server's CPU summed over its processes (both workers with ``--workers 2``, which the
plain generator cannot see), the clients split over the workers (and over the two
nodes of ``pg-redis-2n``, each half's latencies apart), Redis's CPU read, and the
schemas and Redis keys gone after. The statistics of the report are checked on
made-up pairs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import redis

from tests.services import PG_START, REDIS_START

from .helpers import benchrun, generator_options, load_scaleout

pytest.importorskip("picows", reason="the bench extra is not installed")

TINY = ["--clients", "20", "--senders", "2", "--duration", "0.6", "--warmup", "0.2", "--rate", "40"]


def cluster() -> ModuleType:
    """bench/benchrun/cluster.py, as bench/scaleout.py imported it."""
    load_scaleout()
    return benchrun("cluster")


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


def _block(
    so: ModuleType, scenario: str, tmp: Path, rounds: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[dict[str, Any]], list[Any]]:
    """One scenario's block, tiny: its windows, and the servers it started (stopped)."""
    started: list[Any] = []

    class Watched(so.Server):  # type: ignore[misc,name-defined]
        def start(self, timeout: float = 30.0) -> None:
            super().start(timeout)
            started.append(
                (
                    self,
                    self.workers(),
                    self.config.store and _schema_exists(cluster().PG_DSN, self.schema),
                )
            )

    monkeypatch.setattr(so, "Server", Watched)
    args = so.parse([*TINY, "--rounds", str(rounds), "--hop-rounds", str(rounds)])
    redis_pid = so.redis_pid()
    results = so.run_block(args, scenario, tmp, redis_pid, time.monotonic() + 300)
    return results, started


def _check_window(so: ModuleType, r: dict[str, Any]) -> None:
    config = so.CONFIGS[r["config"]]
    assert r["errors"] == [] and r["ok"], r["errors"]
    assert r["protocol"] == so.SCENARIOS[r["scenario"]][0]
    assert r["connected"] == 20
    check = r["check"]
    assert check["lost"] == check["duplicated"] == check["reordered"] == 0
    assert check["malformed"] == check["disconnected"] == check["incomplete"] == 0
    assert r["messages_sent"] > 0
    # Every client received every message of this window (the senders included).
    assert check["deliveries"] == check["expected"] == 20 * r["messages_sent"]
    assert r["deliveries"] > 0 and r["deliveries_per_s"] > 0
    # The server's CPU is measured (summed over its processes), and so is the generator's.
    # The kernel counts CPU time in 10 ms ticks: one short window of the server, the
    # generator or Redis may read 0 (seen on a busy machine); the block's sum may not
    # (asserted by the caller).
    assert r["server_cpu_s"] >= 0 and r["server_cores"] >= 0
    per_delivery = r["server_cpu_us_per_delivery"]
    assert per_delivery is None if r["server_cpu_s"] == 0 else per_delivery > 0
    assert r["generator_cores"] >= 0 and r["other_cores"] >= 0
    if config.broker:
        assert r["redis_cores"] is not None and r["redis_cores"] >= 0
    else:
        assert r["redis_cores"] is None
    # Each worker (or node) has sockets: the clients were split over them.
    assert len(r["worker_sockets"]) == max(config.workers, config.nodes)
    assert all(n > 0 for n in r["worker_sockets"])
    assert sum(r["worker_sockets"]) >= 20
    if so.SCENARIOS[r["scenario"]][1]:
        lat = r["latency_ms"]
        assert 0 < lat["count"] <= check["deliveries"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 10_000
    if config.nodes > 1 and so.SCENARIOS[r["scenario"]][1]:
        local, remote = r["latency_ms_by_worker"]
        assert local["count"] > 0 and remote["count"] > 0
        assert local["count"] + remote["count"] == r["latency_ms"]["count"]


@pytest.mark.parametrize("scenario", ["fanout", "chat_fanout", "steady", "chat_steady"])
def test_each_block_interleaves_its_servers_and_counts_every_delivery(
    so: ModuleType, scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results, started = _block(so, scenario, tmp_path, 2, monkeypatch)
    names = list(so.BLOCKS[scenario])
    # Two rounds, every server once in each, the order reversed in the second.
    assert [(r["round"], r["config"]) for r in results] == [
        *((1, n) for n in names),
        *((2, n) for n in reversed(names)),
    ]
    for r in results:
        _check_window(so, r)
    assert sum(r["server_cpu_s"] for r in results) > 0
    for r in results:
        assert "hubbub_scaleout_RANDOM" in r["argv"] or r["config"] == "sqlite"
        assert ("--workers 2 --metrics-port METRICS_PORT" in r["argv"]) == (
            r["config"] == "pg-redis-2w"
        )
        assert ("and 1 more on PORT2" in r["argv"]) == (r["config"] == "pg-redis-2n")
    for server, workers, had_schema in started:
        assert len(workers) == max(server.config.workers, server.config.nodes)
        assert had_schema == server.config.store
        assert not _schema_exists(cluster().PG_DSN, server.schema)
        assert _keys(cluster().REDIS_URL, server.prefix) == []
        assert not server.procs


def test_a_block_past_its_deadline_stops_after_two_rounds(
    so: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = so.parse([*TINY, "--rounds", "5", "--configs", "pg-redis"])
    results = so.run_block(args, "fanout", tmp_path, None, time.monotonic() - 1)
    assert [r["round"] for r in results] == [1, 2]
    assert all(r["ok"] for r in results), [r["errors"] for r in results]


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
    sum of theirs (the generator's own --server-pid would see one process only); Redis's
    is read beside it."""
    procs = [_burner(0.3), _burner(0.6), _burner(0.2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"done\n"
        pids = [p.pid for p in procs]
        each = [so.proc.cpu_seconds(pid) for pid in pids]
        assert each[0] >= 0.29 and each[1] >= 0.59 and each[2] >= 0.19
        opts = generator_options()
        gen = so.ServerGroupGenerator(opts, pids[:2], redis=pids[2])
        snap = gen.snap()
        assert snap.server_cpu == pytest.approx(each[0] + each[1], abs=0.03)
        assert snap.redis == pytest.approx(each[2], abs=0.03)
        assert snap.server_rss is not None and snap.server_rss > 0
        later = so.GroupSnap(**{**vars(snap), "redis": snap.redis + 0.5})
        assert gen.window_fields(snap, later) == {"redis_cpu_s": pytest.approx(0.5)}
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_redis_pid_is_the_local_redis_server(so: ModuleType) -> None:
    pid = so.redis_pid()
    assert pid is not None, "the local Redis's process should be readable"
    assert "redis" in Path(f"/proc/{pid}/comm").read_text()


def _window(config: str, rnd: int, p99: float, **extra: Any) -> dict[str, Any]:
    """A made-up chat_steady window for the report's statistics."""
    return {
        "scenario": "chat_steady",
        "config": config,
        "round": rnd,
        "ok": True,
        "errors": [],
        "check": dict.fromkeys(("expected", "deliveries", "lost", "duplicated", "reordered"), 0),
        "latency_ms": {"p50": p99 / 3, "p99": p99},
        "deliveries_per_s": 20_000.0,
        "deliveries_per_server_cpu_s": 100_000.0,
        "server_cpu_us_per_delivery": 10.0,
        "server_cores": 0.2,
        "generator_cores": 0.3,
        "redis_cores": 0.01,
        "other_cores": 0.1,
        "worker_sockets": [20],
        **extra,
    }


def test_hop_statistics_pair_windows_and_bootstrap_the_median() -> None:
    load_scaleout()
    rep = sys.modules["scaleout_report"]
    assert rep.bootstrap_median_ci([3.0] * 7) == (3.0, 3.0)
    lo, hi = rep.bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert 1.0 <= lo <= 4.0 <= hi <= 7.0 and hi - lo >= 1.0
    assert rep.bootstrap_median_ci([1.0, 5.0]) == rep.bootstrap_median_ci([1.0, 5.0])
    assert rep._verdict((0.2, 1.9)) == "yes"
    assert rep._verdict((2.1, 9.0)) == "**no**"
    assert rep._verdict((0.5, 3.0)).startswith("not decided")

    # Costs per delivery (us) -> the most deliveries/s of a quiet 2-core machine.
    cost = {"server": 0.5, "generator": 0.8, "redis": 0.0}
    assert rep.ceiling(cost, 1) == (1_250_000, "the generator's one core")
    assert rep.ceiling(cost, 2, 2) == (pytest.approx(2e6 / 1.3), "the machine's two cores")
    assert rep.ceiling({**cost, "server": 2.0}, 1) == (500_000, "the server's cores")

    # pg-redis is 1 ms worse than pg-local in every round, 2n's far node 5 ms worse than
    # its near one in every window; round 3 of pg-local failed: no pair for it.
    results = []
    for rnd in (1, 2, 3, 4):
        base = 10.0 * rnd
        results.append(_window("pg-local", rnd, base))
        results.append(_window("pg-redis", rnd, base + 1.0))
        by = [{"p50": 1.0, "p99": base}, {"p50": 2.0, "p99": base + 5.0}]
        results.append(_window("pg-redis-2n", rnd, base, latency_ms_by_worker=by))
    results[6] = {**results[6], "failed_to_run": True}
    diffs = rep.paired(
        results, "chat_steady", "pg-local", "pg-redis", rep.METRICS["p99"], rep._diff
    )
    assert diffs == [1.0, 1.0, 1.0]
    assert rep.within_window(results, "chat_steady", "pg-redis-2n", "p99") == [5.0] * 4
    lines = "\n".join(rep.hop_table(results))
    assert "| `pg-redis`: one node on Redis against `pg-local` (same round) | p99 | 3 |" in lines
    assert "| +1.00 (+1.00\u2013+1.00) | +1.00 to +1.00 | 3 of 3 | yes |" in lines
    assert "| +5.00 (+5.00\u2013+5.00) | +5.00 to +5.00 | 4 of 4 | **no** |" in lines


def test_report_and_docs_markers(so: ModuleType, tmp_path: Path) -> None:
    """Made-up windows become the tables; --docs replaces only the text between the
    markers of the page."""
    results = [
        _window(c, rnd, 10.0 + rnd, argv=f"hubbub serve {c}", started="2026-12-03 16:00")
        for rnd in (1, 2)
        for c in ("pg-local", "pg-redis", "pg-redis-2w")
    ]
    for r in results:
        if r["config"] == "pg-redis-2w":
            r.update(deliveries_per_server_cpu_s=80_000.0, worker_sockets=[11, 12])
    results += [
        {**r, "scenario": "chat_fanout", "latency_ms": None}
        for r in results
        if r["config"] != "pg-local"
    ]
    args = so.parse(["--quick"])
    args.argv = ["--quick"]
    text = so.render(results, args)
    assert "### Saturation, chat mode (hubbub.v1, one room)" in text
    assert "### The Redis hop (chat mode, fixed rate)" in text
    assert "| `pg-redis-2w`: --workers 2, PostgreSQL + Redis | 2 |" in text
    assert "Sockets per worker with `--workers 2`" in text and "[11, 12]" in text
    assert "`chat_fanout` (saturation): `--workers 2` delivered 1.00\u00d7" in text
    # Per server CPU-second 0.8x one worker: two workers with a core each, 1.6x.
    assert "it delivers 0.80\u00d7 (0.80\u20130.80) what one worker does" in text
    assert "would deliver about 1.60\u00d7 one worker on one core" in text
    assert "hubbub serve pg-redis-2w" in text
    # 10 us of server and 15 us of generator CPU per delivery: the generator's one core
    # bounds both (66,667 deliveries/s).
    assert "at most 66,667 deliveries/s (bound: the generator's one core)" in text
    assert "**1.00\u00d7** at best" in text

    page = tmp_path / "scaling.md"
    page.write_text("# Scaling\n\nintro\n\n## Scaling out\n\nprose\n")
    so.write_docs(page, text)
    so.write_docs(page, "second")
    body = page.read_text()
    rep = sys.modules["scaleout_report"]
    assert body.startswith("# Scaling\n\nintro\n\n## Scaling out\n\nprose\n")
    assert body.count(rep.BEGIN) == body.count(rep.END) == 1
    assert "second" in body and "### Saturation" not in body
