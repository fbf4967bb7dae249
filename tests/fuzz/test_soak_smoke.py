"""The soak harness itself, in a short run: it starts a real server, runs every kind
of client, and its verdicts hold (and are real: each is computed from counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.soak import ROOT


def test_soak_short_run(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.soak", "--duration", "20", "--json", str(out),
         "--rooms", "2", "--clients", "3", "--misbehaving", "2",
         # the machine is shared: a generous latency bound for the smoke run
         "--p99-bound", "2.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(result["verdicts"].values()), result["verdicts"]
    # Every kind of client ran, and the checks had something to check.
    assert result["sent"] > 50 and result["acked"] == result["sent"]
    assert result["deliveries checked"] >= result["sent"] * 2
    bad = result["misbehaviour"]
    assert bad.get("storm cycles", 0) > 10
    assert bad.get("garbage frames", 0) > 10
    assert bad.get("non-reader connections", 0) >= 2
    assert bad.get("pipelined connections", 0) + bad.get(
        "pipelined connections (server stopped reading)", 0
    ) >= 1
    assert result["rss end KiB"] > 0 and result["rss warm-up KiB"] > 0
