"""hubbub.bench.report: the table ``hubbub bench`` prints, from recorded results."""

from __future__ import annotations

import json
from pathlib import Path

from hubbub.bench.report import table

DATA = Path(__file__).parent / "data"


def test_table_of_recorded_results_is_unchanged() -> None:
    """Every kind of result (room, latency, idle, connect; ok, with errors, noisy) gives the
    same rows as before; data/table.txt was written by the table code before its split
    (data/table_results.json: the recorded results of an earlier version of
    bench/run.py, with the latency scenario)."""
    saved = json.loads((DATA / "table_results.json").read_text())
    results = [
        {**r, "scenario": r["scenario"].removeprefix("chat_")}
        for per in saved["results"].values()
        for rs in per.values()
        for r in rs
        if not r.get("failed_to_run")
    ]
    text = table(results)
    assert text == (DATA / "table.txt").read_text()
    assert "ERRORS: 3 lost" in text and "NOISY" in text and "== idle (hubbub r1) ==" in text
