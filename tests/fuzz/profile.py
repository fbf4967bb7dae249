"""How long the fuzz properties run: briefly in ``make test``, longer in ``make fuzz``.

``HUBBUB_FUZZ_EXAMPLES`` (set by ``tools/fuzz.py``) multiplies every property's
``max_examples``; unset, each property runs its quick budget (a few seconds).
Failures are replayed from ``reports/fuzz/hypothesis`` in a long run (the quick
run keeps no example database, so it writes nothing into the checkout).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

SCALE = max(1, int(os.environ.get("HUBBUB_FUZZ_EXAMPLES", "1") or "1"))
LONG = SCALE > 1


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for one property: ``max_examples`` quick examples (times
    the long-run scale), no per-example deadline (the machine may be busy)."""
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        derandomize=False,
        database=DirectoryBasedExampleDatabase("reports/fuzz/hypothesis") if LONG else None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
        print_blob=True,
    )
