from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from state import db as state_db


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
    state_db.migrate(upgraded)  # again: nothing to do, no error


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
