from __future__ import annotations

import builtins
import dis
import hashlib
import inspect
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from rules.call_outcome import is_error
from state import store as state_db
from state.store import open_store
from state.store.migrations import CALL_COLUMNS, MIGRATIONS, SANDBOX_EVENT_COLUMNS, Migration, migrate


def call(call_id: str, started_at: str, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": call_id,
        "started_at": started_at,
        "host": "api.anthropic.com",
        "path": "/v1/messages",
        "provider": "anthropic",
        "api": "messages",
        "model": "claude-sonnet-4-5",
        "stream": 1,
        "status": 200,
    }
    return row | columns


@pytest.fixture
def db() -> sqlite_utils.Database:
    database = state_db.connect(memory=True)
    database["calls"].insert_all(
        [
            call(
                "a",
                "2026-11-20T10:00:00+00:00",
                session_id="s1",
                client="alice",
                input_tokens=10,
                cache_write_5m_tokens=1000,
                output_tokens=5,
                cost_usd=0.01,
                cache_status="write",
            ),
            call(
                "b",
                "2026-11-20T10:01:00+00:00",
                session_id="s1",
                client="alice",
                input_tokens=10,
                cache_read_tokens=1000,
                output_tokens=5,
                cost_usd=0.002,
                cache_status="hit",
            ),
            call(
                "c",
                "2026-11-20T10:30:00+00:00",
                session_id="s1",
                client="alice",
                input_tokens=10,
                cache_write_5m_tokens=1000,
                cost_usd=0.01,
                cache_status="miss",
                cache_note="TTL expired (29m since the previous call; cache TTL 5m)",
            ),
            call(
                "d",
                "2026-11-20T11:00:00+00:00",
                model="gpt-5",
                provider="openai",
                api="chat",
                status=429,
                error="rate_limit_exceeded: slow down",
            ),
            call("e", "2026-11-20T11:00:01+00:00", api="count_tokens", counted_tokens=5, cost_usd=0.0),
        ]
    )
    return database


def test_every_documented_view_exists(db: sqlite_utils.Database) -> None:
    assert set(db.view_names()) >= {
        "daily_usage",
        "latest_rate_limits",
        "sessions",
        "model_usage",
        "cache_misses",
        "errors",
    }


def test_sessions_view(db: sqlite_utils.Database) -> None:
    [session] = list(db.query("select * from sessions"))
    assert session == {
        "session_id": "s1",
        "first_call_at": "2026-11-20T10:00:00+00:00",
        "last_call_at": "2026-11-20T10:30:00+00:00",
        "clients": "alice",
        "models": "claude-sonnet-4-5",
        "calls": 3,
        "input_tokens": 30,
        "cache_read_tokens": 1000,
        "cache_write_tokens": 2000,
        "output_tokens": 10,
        "cost_usd": 0.022,
        "cache_misses": 1,
        "errors": 0,
    }


def test_model_usage_view(db: sqlite_utils.Database) -> None:
    rows = {row["model"]: row for row in db.query("select * from model_usage")}
    assert set(rows) == {"claude-sonnet-4-5", "gpt-5"}  # count_tokens calls are not usage
    sonnet = rows["claude-sonnet-4-5"]
    assert (sonnet["calls"], sonnet["cache_read_tokens"], sonnet["cache_write_tokens"]) == (3, 1000, 2000)
    assert sonnet["cache_read_share"] == round(1000 / 3030, 4)
    assert rows["gpt-5"]["errors"] == 1


def test_cache_misses_and_errors_views(db: sqlite_utils.Database) -> None:
    [miss] = list(db.query("select id, cache_note from cache_misses"))
    assert miss == {"id": "c", "cache_note": "TTL expired (29m since the previous call; cache TTL 5m)"}
    assert [row["id"] for row in db.query("select id from errors")] == ["d"]


def test_a_database_from_before_cache_health_gains_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = state_db.connect(path)
    old["calls"].insert(call("x", "2026-11-20T10:00:00+00:00"))
    # Roll back to what migrations 1-4 made.
    for view in ("sessions", "model_usage", "cache_misses", "errors"):
        old.execute(f"drop view {view}")
    old.execute("alter table calls drop column cache_status")
    old.execute("alter table calls drop column cache_note")
    old.execute("delete from _sluice_migrations where id = 5")
    old.close()
    upgraded = state_db.connect(path)
    assert {"cache_status", "cache_note"} <= set(upgraded["calls"].columns_dict)
    assert [row["id"] for row in upgraded.query("select id from calls")] == ["x"]
    assert "cache_misses" in upgraded.view_names()
    migrate(upgraded)  # again: nothing to do, no error


def test_a_database_from_before_regions_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = state_db.connect(path)
    old["calls"].insert(call("x", "2026-11-20T10:00:00+00:00"))
    old.execute("alter table calls drop column region")
    old.execute("delete from _sluice_migrations where id = 9")
    old.close()
    upgraded = state_db.connect(path)
    assert "region" in upgraded["calls"].columns_dict
    assert [row["region"] for row in upgraded.query("select region from calls")] == [None]


# -- the migrations themselves: numbered, named, frozen ----------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "store"

# One digest per released migration: sha256 of its number, name and source. A released migration is never
# edited (databases it already ran on will not run it again); a change is a new migration, recorded here
# with its digest when it is written.
RELEASED = {
    1: "5f18a06c9c63461e",  # calls_and_rate_limits
    2: "15cd944d842e9190",  # views
    3: "cfcc282e17622e5d",  # credentials
    4: "90c68babc6790492",  # budgets
    5: "571832e8f40ba153",  # cache_health_and_views
    6: "76a882b153997af3",  # credential_history_and_routing
    7: "21e95229da492f7f",  # alerts
    8: "3ab16989a669a0f4",  # sandbox_events
    9: "65d58b75a9643d8c",  # region
    10: "19f772eefcd54427",  # teams_and_rates
    11: "a237c9dd0bc01bff",  # one_definition_of_an_error
}


def digest(migration: Migration) -> str:
    text = f"{migration.number} {migration.name}\n{inspect.getsource(migration.apply)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda m: f"{m.number}_{m.name}")
def test_a_released_migration_is_never_edited(migration: Migration) -> None:
    recorded = RELEASED.get(migration.number)
    assert recorded is not None, (
        f"migration {migration.number} ({migration.name}) has no digest: record {digest(migration)!r} in "
        "RELEASED when it is released"
    )
    assert digest(migration) == recorded, (
        f"migration {migration.number} ({migration.name}) was edited after release; migrations are "
        "append-only: undo the edit and add a new migration at the end of MIGRATIONS instead"
    )


def test_migrations_are_numbered_in_order_and_named_once() -> None:
    assert [m.number for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    names = [m.name for m in MIGRATIONS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names)


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda m: f"{m.number}_{m.name}")
def test_a_migration_builds_from_literals_not_from_live_module_data(migration: Migration) -> None:
    """A migration that read `CALL_COLUMNS` would create a different table tomorrow than it did today."""
    read = {i.argval for i in dis.get_instructions(migration.apply) if i.opname == "LOAD_GLOBAL"}
    assert read <= set(dir(builtins)), (
        f"migration {migration.number} reads {sorted(read - set(dir(builtins)))}"
    )


def schema(db: sqlite_utils.Database) -> dict[tuple[str, str], str | None]:
    """Every object of the database and its SQL, whitespace around punctuation aside: SQLite keeps an
    `ALTER TABLE ... ADD COLUMN` as text spliced into the table's `CREATE TABLE`, so a column added by a
    later migration reads `[a] TEXT\\n, [b] TEXT)` where one created with the table reads `[a] TEXT,\\n [b]
    TEXT\\n)`: the same table."""
    found = {}
    for kind, name, sql in db.conn.execute("select type, name, sql from sqlite_master"):
        found[(kind, name)] = None if sql is None else _normal(sql)
    return found


def _normal(sql: str) -> str:
    return re.sub(r"\s*([(),;])\s*", r"\1", re.sub(r"\s+", " ", sql.strip())).rstrip(";")


def fixture_schema(name: str) -> dict[tuple[str, str], str | None]:
    """A schema file of tests/fixtures/store: `-- kind name` then the object's SQL (`-- kind name on table:
    implicit` for an index SQLite made itself)."""
    found: dict[tuple[str, str], str | None] = {}
    for block in re.split(r"^(?=-- )", (FIXTURES / name).read_text(), flags=re.M):
        if not block.strip():
            continue
        header, _, sql = block.partition("\n")
        kind, name_, *rest = header.removeprefix("-- ").split()
        found[(kind, name_)] = None if rest else _normal(sql)
    return found


def columns(db: sqlite_utils.Database) -> dict[str, list[tuple[object, ...]]]:
    tables = [name for (name,) in db.conn.execute("select name from sqlite_master where type = 'table'")]
    return {
        table: [tuple(row) for row in db.conn.execute(f"pragma table_xinfo([{table}])")] for table in tables
    }


def test_migrations_1_to_10_build_the_schema_they_built_before_they_were_frozen() -> None:
    """schema_1_to_10.sql is what migrations 1-10 created when `calls` was still built from the live column
    list (captured from that code): the frozen migrations build the same tables, columns, indexes and
    views."""
    fresh = sqlite_utils.Database(memory=True)
    migrate(fresh, MIGRATIONS[:10])
    assert schema(fresh) == fixture_schema("schema_1_to_10.sql")


def test_a_database_made_before_the_store_opens_unchanged(tmp_path: Path) -> None:
    """database_1_to_10.sql is a database as the code before the store left it (migrations 1-10 applied,
    a row in the main tables): opened now, none of its migrations runs again and its rows are as they were;
    its schema is a fresh database's."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "database_1_to_10.sql").read_text())
    before = _rows(path)
    assert len(before["_sluice_migrations"]) == 10

    open_store(path).connect().close()

    after = _rows(path)
    assert after["_sluice_migrations"][:10] == before["_sluice_migrations"]  # none applied again
    assert [row[0] for row in after["_sluice_migrations"]] == [m.number for m in MIGRATIONS]
    assert {t: r for t, r in after.items() if t != "_sluice_migrations"} == {
        t: r for t, r in before.items() if t != "_sluice_migrations"
    }
    reopened = sqlite_utils.Database(path)
    fresh = state_db.connect(memory=True)
    assert schema(reopened) == schema(fresh)
    assert columns(reopened) == columns(fresh)


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        tables = [name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")]
        return {table: list(conn.execute(f"select * from [{table}] order by rowid")) for table in tables}


def test_a_fresh_calls_table_has_the_columns_the_writer_fills_in_order() -> None:
    db = state_db.connect(memory=True)
    assert [column.name for column in db["calls"].columns] == list(CALL_COLUMNS)
    assert [column.name for column in db["sandbox_events"].columns] == list(SANDBOX_EVENT_COLUMNS)


def test_every_view_counts_as_errors_what_the_one_definition_calls_one() -> None:
    """daily_usage, sessions, model_usage and errors agree with rules/call_outcome.py, row by row."""
    db = state_db.connect(memory=True)
    outcomes = [(None, None), (None, "x"), (200, None), (200, "x"), (299, None), (400, None), (429, None)]
    outcomes += [(500, None), (500, "x"), (200, "")]
    rows = [
        call(f"c{i}", f"2026-11-20T10:{i:02d}:00+00:00", status=status, error=error, session_id="s1")
        for i, (status, error) in enumerate(outcomes)
    ]
    db["calls"].insert_all(rows)
    failed = {row["id"] for row in rows if is_error(row)}
    assert len(failed) == 7
    assert {row["id"] for row in db.query("select id from errors")} == failed
    for view in ("daily_usage", "sessions", "model_usage"):
        assert sum(row["errors"] for row in db.query(f"select errors from {view}")) == len(failed), view
