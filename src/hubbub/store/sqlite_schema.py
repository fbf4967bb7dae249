"""The SQLite store's schema: its migrations and a message's row.

Re-exported by :mod:`hubbub.store.sqlite` (``MIGRATIONS``, ``SCHEMA_VERSION``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..protocol import Message

# Migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
# Never edit a released step; append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE rooms (
        name     TEXT PRIMARY KEY,
        epoch    TEXT NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        created  REAL NOT NULL
    );
    CREATE TABLE messages (
        room      TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        id        TEXT NOT NULL,
        client_id TEXT,
        nick      TEXT NOT NULL,
        text      TEXT NOT NULL,
        ts        REAL NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_client_id ON messages (room, client_id)
        WHERE client_id IS NOT NULL;
    CREATE INDEX messages_ts ON messages (ts);
    """,
    # 2: private rooms (history and members for members only).
    """
    ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the sender's user id (a token's ``sub``; NULL for an anonymous sender).
    """
    ALTER TABLE messages ADD COLUMN "user" TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = 'room, seq, id, client_id, nick, text, ts, "user"'


def _columns(msg: Message, user: str | None) -> tuple[Any, ...]:
    """A message's row, in the order of ``_COLUMNS``."""
    return (msg.room, msg.seq, msg.id, msg.client_id, msg.nick, msg.text, msg.ts, user)


def migrate(db: sqlite3.Connection) -> None:
    """Take ``db`` to :data:`SCHEMA_VERSION`, one transaction per step."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for step in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={step + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
