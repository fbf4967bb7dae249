"""The steady-rate scenario: several rates on one connected room, each window with its own
figures and checks; and bench/run.py's merge of such parts into one result."""

from __future__ import annotations

import os

import pytest

from hubbub import Server
from hubbub.bench.scenarios import steady

from ..conftest import ws_url
from .helpers import load_bench_run, room_options

pytest.importorskip("picows", reason="the bench extra is not installed")


async def test_steady_measures_each_rate_on_one_room(seed_server: Server) -> None:
    opts = room_options(
        url=ws_url(seed_server),
        server_pid=os.getpid(),
        clients=30,
        senders=3,
        duration=0.6,
        warmup=0.2,
    )
    low, high = await steady(opts, [10.0, 30.0])
    for result, rate in ((low, 10.0), (high, 30.0)):
        assert result["ok"], result["errors"]
        assert result["scenario"] == "steady"
        assert result["rate_msgs_per_s"] == rate
        assert result["connected"] == 30
        chk = result["check"]
        assert chk["lost"] == chk["duplicated"] == chk["reordered"] == 0
        # This window's messages only, every one delivered to every client.
        assert result["messages_sent"] > 0
        assert chk["deliveries"] == chk["expected"] == 30 * result["messages_sent"]
        assert result["latency_ms"]["count"] > 0
        assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
        assert "check_total" not in result
    # The second window sends about three times as many messages as the first (its own).
    assert high["messages_sent"] > 2 * low["messages_sent"]


def test_parts_merge_into_one_result_with_their_errors() -> None:
    run = load_bench_run()
    from benchrun.running import merge_parts

    parts = [
        {"rate_msgs_per_s": 20.0, "ok": True, "errors": [], "noisy": False, "other_cpu_pct": 3.0},
        {
            "rate_msgs_per_s": 80.0,
            "ok": False,
            "errors": ["2 lost"],
            "noisy": True,
            "other_cpu_pct": 40.0,
        },
    ]
    merged = merge_parts(parts, "r", "rate_msgs_per_s")
    assert merged["parts"] == ["r20", "r80"]
    assert merged["r80"] is parts[1]
    assert merged["errors"] == ["r80: 2 lost"]
    assert not merged["ok"]
    assert merged["noisy"] and merged["other_cpu_pct"] == 40.0
    assert run.SCENARIO_ORDER[-2:] == ("join_storm", "reconnect_storm")
