"""The report's context: the plan, its aggregated results and where the report goes
(shared by report.py and report_steady.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .running import Plan
from .servers import BASELINE, SERVERS


@dataclass
class Context:
    """What the report is made of: the plan and its results, aggregated, and where it goes."""

    plan: Plan
    agg: dict[str, Any]
    charts: dict[str, Path]
    doc: Path
    facts: dict[str, str]
    elapsed: float
    command: str

    @property
    def base(self) -> dict[str, Any]:
        """Node ws's figures, the baseline of every ratio."""
        return self.agg.get(BASELINE, {})  # type: ignore[no-any-return]

    def names(self, scenario: str) -> list[str]:
        """The servers of the run that took part in ``scenario``, in the run's order: those
        with results for it (a report made again from recorded results shows what was
        measured then, whatever the servers' scenarios are now)."""
        return [
            n
            for n in self.plan.servers
            if n in SERVERS and scenario in self.plan.results.get(n, {})
        ]

    def chart(self, scenario: str, alt: str) -> list[str]:
        if scenario not in self.charts:
            return []
        return [f"![{alt}]({os.path.relpath(self.charts[scenario], self.doc.parent)})", ""]
