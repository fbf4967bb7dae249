"""The fuzz properties of tests/fuzz, run longer: ``make fuzz``.

    python -m tools.fuzz [--examples-scale 50] [--seed N] [pytest args...]

Runs ``pytest tests/fuzz`` (the soak smoke test excluded) with every property's
``max_examples`` multiplied by ``--examples-scale`` (``HUBBUB_FUZZ_EXAMPLES``) and
Hypothesis' example database in reports/fuzz/hypothesis, so that a failure found
once is replayed first next time. ``--seed`` makes a run repeatable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples-scale", type=int, default=50,
                    help="multiply every property's max_examples (default 50)")
    ap.add_argument("--seed", help="Hypothesis seed, for a repeatable run")
    args, rest = ap.parse_known_args(argv)  # fmt: skip
    env = {**os.environ, "HUBBUB_FUZZ_EXAMPLES": str(args.examples_scale)}
    cmd = [sys.executable, "-m", "pytest", "tests/fuzz", "-q",
           "--deselect", "tests/fuzz/test_soak_smoke.py::test_soak_short_run",
           "--timeout", "0", "--hypothesis-show-statistics"]  # fmt: skip
    if args.seed:
        cmd += ["--hypothesis-seed", args.seed]
    return subprocess.call([*cmd, *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
