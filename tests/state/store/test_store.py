from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

import state.store
from state.store import Store, open_store, redact, redact_error


def test_opening_creates_the_database_with_its_schema(tmp_path: Path) -> None:
    store = open_store(tmp_path / "deep" / "sluice.db")
    assert store.file.exists()
    with sqlite3.connect(store.file) as conn:
        tables = {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"calls", "rate_limits", "credentials", "budget_holds", "alerts", "_sluice_migrations"} <= tables


@pytest.mark.parametrize("where", ["a-file/sluice.db", "a-directory"])
def test_a_location_that_cannot_be_opened_fails_when_opened(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "a-directory").mkdir()
    with pytest.raises((OSError, sqlite3.Error)):
        open_store(tmp_path / where)


def test_the_migrations_run_once_per_file_not_per_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    real = state.store.migrate
    monkeypatch.setattr(state.store, "migrate", lambda db: (ran.append("migrate"), real(db)))
    store = open_store(tmp_path / "sluice.db")
    for _ in range(3):
        store.connect().close()
    with store.reading():
        pass
    assert ran == ["migrate"]


def test_a_database_deleted_under_the_store_is_created_again_with_its_schema(tmp_path: Path) -> None:
    store = open_store(tmp_path / "sluice.db")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.file}{suffix}").unlink(missing_ok=True)
    db = store.connect()
    assert db["calls"].exists()
    db.close()


def test_a_reading_connection_is_closed_after_the_read(tmp_path: Path) -> None:
    store = open_store(tmp_path / "sluice.db")
    with store.reading() as db:
        assert db.execute("select count(*) from calls").fetchone() == (0,)
    with pytest.raises(sqlite3.ProgrammingError):
        db.execute("select 1")


def test_an_immediate_transaction_commits_or_rolls_back_as_a_whole(tmp_path: Path) -> None:
    store = open_store(tmp_path / "sluice.db")
    db = store.connect()
    with store.immediate(db):
        db.execute("insert into budgets (client, usd, period) values ('alice', 5, 'month')")
    with pytest.raises(RuntimeError), store.immediate(db):
        db.execute("insert into budgets (client, usd, period) values ('bob', 5, 'month')")
        raise RuntimeError("half way")
    with store.reading() as other:
        assert [row[0] for row in other.execute("select client from budgets")] == ["alice"]
    db.close()


def test_the_secrets_live_beside_the_database(tmp_path: Path) -> None:
    assert Store(tmp_path / "usage.db").secrets_path == tmp_path / "usage.secrets.db"
    assert Store("~/sluice.db").secrets_path == Path("~/sluice.secrets.db").expanduser()


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("sluice.db", "sluice.db"),
        ("/var/lib/sluice/sluice.db", "/var/lib/sluice/sluice.db"),
        ("postgresql://sluice@db.internal:5432/sluice", "postgresql://sluice@db.internal:5432/sluice"),
        (
            "postgresql://sluice:s3cr%40t@db.internal:5432/sluice",
            "postgresql://sluice:***@db.internal:5432/sluice",
        ),
        ("postgresql://sluice:@db.internal/sluice", "postgresql://sluice:***@db.internal/sluice"),
        (
            "postgresql://db.internal/sluice?user=sluice&password=s3cret&sslmode=require",
            "postgresql://db.internal/sluice?user=sluice&password=***&sslmode=require",
        ),
        ("postgresql://sluice:s3cret@[::1/sluice", "postgresql://…"),
    ],
)
def test_a_location_is_shown_without_its_password(location: str, shown: str) -> None:
    assert redact(location) == shown
    assert Store(location).display == shown
    assert "s3c" not in repr(Store(location))


@pytest.mark.parametrize(
    "location",
    [
        "postgresql://sluice:s3cret%ZZpw@127.0.0.1/sluice",  # libpq quotes the bad token
        "postgresql://sluice:s3cretpw@[::1/sluice",  # libpq quotes the whole URL
        "postgresql://127.0.0.1/sluice?password=s3cret%ZZpw",
    ],
)
def test_a_location_that_cannot_be_opened_is_named_without_its_password(location: str) -> None:
    with pytest.raises(psycopg.Error) as raised:
        open_store(location)
    assert "s3cret" in str(raised.value)  # what would have been printed
    message = redact_error(location, raised.value)
    assert "s3cret" not in message
    assert message  # still says what is wrong
