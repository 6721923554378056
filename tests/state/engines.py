"""Both engines for the contract tests of a part: `location` is a SQLite file and a PostgreSQL database (a
fresh one on the session's server), so each test proves the same behaviour on both. Import it into a test
module: `from tests.state.engines import location`."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The `sluice_db` of one engine: a SQLite file in the test's directory, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("postgres_url"))
