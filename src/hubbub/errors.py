"""Errors that stop hubbub from starting.

``hubbub serve`` prints a :class:`StartupError` as one line on stderr (what is
wrong and what to do) and exits with status 1, never with a traceback.
"""

from __future__ import annotations


class StartupError(Exception):
    """The server cannot start; ``str(exc)`` is the one line shown to the operator."""
