"""A chat server shared by the socket properties of this package (one per module)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from .live import FUZZ_SETTINGS, LiveChat


@pytest.fixture(scope="module")
def live_chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveChat]:
    """The chat app on a free port in a thread; ``live_chat.tracebacks.take()`` returns the
    ERROR (or exc_info) log records since the last call."""
    db = tmp_path_factory.mktemp("fuzz") / "hubbub.db"
    live = LiveChat(db, **FUZZ_SETTINGS)
    root = logging.getLogger()
    handler = live.tracebacks
    root.addHandler(handler)
    live.start()
    try:
        yield live
    finally:
        live.stop()
        root.removeHandler(handler)
