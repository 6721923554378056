"""Suite-wide switches and fixtures.

`--soak` runs the tests marked `soak` and scales the fault suite's loads up. A real PostgreSQL server
(`tests/postgres.py`) for any test directory: `postgres_server` (one per session and xdist worker),
`postgres_url` (a fresh database on it for one test), `start_postgres` (servers of a test's own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests import postgres
from tests.postgres import PostgresServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long fault-injection and load tests (marked soak) and the full-size loads",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """True under `--soak`: tests pick their full-size loads."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture(scope="session")
def postgres_available() -> None:
    """Skips the test when no PostgreSQL server can be started here, saying why; under CI (CI=true), fails."""
    reason = postgres.unavailable_reason()
    if reason is None:
        return
    if postgres.in_ci():
        pytest.fail(f"{reason}; CI is set, where the PostgreSQL tests must run, not be skipped")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server(postgres_available: None) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (one per xdist worker), started on first use. Tests want
    `postgres_url`; one that stops the server need not start it again, `postgres_url` does."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's server, owned by the login role, dropped after the test: its URL,
    `postgresql://sluice:<password>@127.0.0.1:<port>/test_<n>` (the password: `postgres_server.password`)."""
    if not postgres_server.running:
        postgres_server.start()
    url = postgres_server.create_database()
    yield url
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(url)


@pytest.fixture
def start_postgres(postgres_available: None) -> Iterator[Callable[[], PostgresServer]]:
    """`start_postgres()` starts a PostgreSQL server of this test's own; each is closed when the test ends."""
    started: list[PostgresServer] = []

    def start() -> PostgresServer:
        server = PostgresServer()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.close()
