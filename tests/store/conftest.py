"""Every Store implementation, for the contract suite (tests/store/test_contract.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubbub.store import Store
from tests.services import make_store, pg_schema, redis_prefix  # noqa: F401 (fixtures)


@dataclass
class Backend:
    """One implementation on its own fresh backing data (a file, a schema)."""

    name: str
    spec: dict[str, str]

    def make(self) -> Store:
        """A new, unopened store on this backend's data (a restart of the node)."""
        return make_store(self.spec)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", {"kind": "sqlite", "path": str(tmp_path / "hubbub.db")})
    schema = request.getfixturevalue("pg_schema")
    return Backend("postgres", {"kind": "postgres", "schema": schema})


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
