"""``python -m hubbub.bench``."""

from __future__ import annotations

from . import main

# Guarded: the generator's worker processes are started with "spawn".
if __name__ == "__main__":
    raise SystemExit(main())
