"""The store and the broker ``hubbub serve`` runs on, from the settings' URLs.

``--store``: empty (the SQLite file ``--db``), ``sqlite:///PATH`` (SQLAlchemy's
form: ``sqlite:///hubbub.db`` is relative, ``sqlite:////var/lib/hubbub/hubbub.db``
absolute) or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (also
``postgres://``), where an extra ``schema=NAME`` query parameter puts hubbub's
tables in that PostgreSQL schema.

``--broker``: ``local`` (one node) or ``redis://[USER:PASSWORD@]HOST[:PORT][/DB]``
(also ``rediss://`` for TLS and ``unix://PATH``), where an extra ``prefix=P``
query parameter starts every channel name (default ``hubbub:``), so that
several hubbub clusters can share one Redis.

Anything else is a :class:`~hubbub.errors.StartupError` naming the accepted forms.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..broker import Broker, LocalBroker
from ..config import Settings
from ..errors import StartupError
from ..store import Store

STORE_FORMS = "sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB[?schema=NAME]"
BROKER_FORMS = "local or redis://HOST[:PORT][/DB][?prefix=P] (rediss://, unix://)"


def _take_param(url: str, name: str) -> tuple[str, str | None]:
    """``url`` without the query parameter ``name``, and its value (None if absent)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [v for k, v in query if k == name]
    rest = [(k, v) for k, v in query if k != name]
    return urlunsplit(parts._replace(query=urlencode(rest))), values[-1] if values else None


def _hide_password(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


def describe_store(settings: Settings) -> str:
    """How the store is named in messages (no password)."""
    url = getattr(settings, "store", "")
    return _hide_password(url) if url else f"--db {settings.db}"


def build_store(settings: Settings) -> Store:
    url = getattr(settings, "store", "")
    if not url:
        from ..store.sqlite import SQLiteStore

        return SQLiteStore(settings.db, settings.sqlite_synchronous)
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        from ..store.sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite:///") :], settings.sqlite_synchronous)
    scheme = url.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres") and "://" in url:
        from ..store.postgres import PostgresStore

        dsn, schema = _take_param(url, "schema")
        try:
            return PostgresStore(dsn, schema=schema or None)
        except ValueError as exc:
            raise StartupError(f"--store {_hide_password(url)}: {exc}") from None
    raise StartupError(
        f"--store {_hide_password(url)!r} is not a store URL; use {STORE_FORMS}"
    )


def build_broker(settings: Settings) -> Broker:
    url = getattr(settings, "broker", "local") or "local"
    if url == "local":
        return LocalBroker()
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix") and "://" in url:
        from ..broker.redis import RedisBroker

        plain, prefix = _take_param(url, "prefix")
        try:
            if prefix is None:
                return RedisBroker(plain)
            return RedisBroker(plain, prefix=prefix)
        except ValueError as exc:
            raise StartupError(f"--broker {_hide_password(url)}: {exc}") from None
    raise StartupError(
        f"--broker {_hide_password(url)!r} is not a broker URL; use {BROKER_FORMS}"
    )
