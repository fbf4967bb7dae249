"""bench/run.py's report: the same recorded results give the same markdown, byte for byte.

``data/report_results.json`` holds the results of a real ``--quick`` run
(charts' raw series left out) plus a made-up second round with a failed
run, a noisy repeated one, lost messages and a changed hubbub source, so
that every branch of the report is drawn; the steady rates and the storms
are from a later real ``--quick`` run against hubbub and Node ws, with a
made-up reconnect storm round in which hubbub's clients lost 3 messages.
``data/report_*.md`` are what the report writer made of them (dates,
package versions and bench/findings.md held fixed). Regenerate them only
when the report is meant to change:
``HUBBUB_UPDATE_GOLDEN=1 pytest tests/bench/test_run_report.py``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import ROOT, load_bench_run

DATA = Path(__file__).parent / "data"
FINDINGS = ROOT / "bench" / "findings.md"

pytest.importorskip("matplotlib", reason="the bench extra is not installed")


def _variant(name: str) -> dict[str, Any]:
    saved: dict[str, Any] = json.loads((DATA / "report_results.json").read_text())
    if name == "quick":
        # One round of a --quick run: no spreads, no failure, one hubbub source.
        saved = copy.deepcopy(saved)
        saved["plan"].update(rounds=1, quick=True, command=".venv/bin/python bench/run.py --quick")
        for per in saved["results"].values():
            for scenario, results in per.items():
                per[scenario] = results[:1]
    return saved


@pytest.fixture
def bench_run(monkeypatch: pytest.MonkeyPatch) -> Any:
    run = load_bench_run()
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "2026-12-03")
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "9.9.9")
    for spec in run.SERVERS.values():
        monkeypatch.setattr(spec, "versions", lambda name=spec.name: f"{name} versions")
    # The recorded results stand in for a machine with the peers installed.
    monkeypatch.setattr(run, "check_prerequisites", lambda servers: [])
    return run


# The recorded results leave the charts' series out: their legends are empty.
@pytest.mark.filterwarnings("ignore:No artists with labels found")
@pytest.mark.parametrize("variant", ["rounds2", "quick"])
def test_report_from_recorded_results_is_unchanged(
    bench_run: Any, variant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = _variant(variant)
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps(saved))
    out = tmp_path / "report" / "bench.md"
    img = tmp_path / "report" / "img"
    status = bench_run.main(
        ["--report-only", "--json", str(raw), "--out", str(out), "--img", str(img)]
    )
    # The made-up second round has failures: the exit status says so.
    assert status == (1 if variant == "rounds2" else 0)
    text = out.read_text()
    charts = re.findall(r"!\[[^]]*\]\((img/[^)]+\.png)\)", text)
    assert len(charts) == 6
    for chart in charts:
        assert (out.parent / chart).stat().st_size > 0
    findings = FINDINGS.read_text().rstrip()
    assert findings in text
    text = text.replace(findings, "<bench/findings.md>")
    golden = DATA / f"report_{variant}.md"
    if os.environ.get("HUBBUB_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert f"report: {out}" in capsys.readouterr().out


def test_report_golden_files_show_every_section() -> None:
    """The recorded reports draw what the test is meant to guard (not an empty page)."""
    full = (DATA / "report_rounds2.md").read_text()
    quick = (DATA / "report_quick.md").read_text()
    for heading in (
        "## Targets",
        "## Summary",
        "## Fan-out",
        "## Steady load, seed mode",
        "## Chat mode: fan-out",
        "## Steady load, chat mode",
        "## Join storm",
        "## Reconnect storm",
        "## Idle connections",
        "## Connection rate",
        "## Servers",
        "## Method and machine",
        "## Reproduce",
    ):
        assert heading in full and heading in quick
    assert "## Errors reported" in full and "## Errors reported" not in quick
    assert "\u2013" in full  # the en dash of (min-max) spreads over two rounds
    assert "results mix versions" in full and "hubbub measured at git" in quick
    assert "quick smoke run" in quick and "quick smoke run" not in full
    assert "1 round(s) with errors" in full
    # The made-up second round of the reconnect storm lost messages: a missed target.
    assert "| reconnect storm: 1,000 clients resumed (no gap, no duplicate) within 15 s " in full
    assert "(with errors) | **no** |" in full
    assert "| 3/0/0/3 |" in full  # gaps/duplicated/bad resumed/lost, summed over the rounds


@pytest.mark.filterwarnings("ignore:No artists with labels found")
def test_a_new_report_keeps_the_hand_written_sections(bench_run: Any, tmp_path: Path) -> None:
    """docs/benchmarks.md's hand-written section on the compiled path survives a new run."""
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps(_variant("quick")))
    out = tmp_path / "bench.md"
    kept = "## Steady load: the compiled path\n\nWritten by hand.\n\n### A part\n\nMore.\n"
    out.write_text("# Benchmarks\n\nold figures\n\n" + kept + "\n## Later\n\nnot kept\n")
    bench_run.main(
        ["--report-only", "--json", str(raw), "--out", str(out), "--img", str(tmp_path / "img")]
    )
    text = out.read_text()
    assert text.count(kept.rstrip()) == 1
    assert "old figures" not in text and "not kept" not in text
    assert text.index("## Reproduce") < text.index("## Steady load: the compiled path")
