"""`sluice migrate` (state/move.py) and the `sluice` reports on PostgreSQL: a SQLite history moved into a
real PostgreSQL server, and every report read from both, alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from state import cli, move
from state.cli import main
from state.store import connect, open_store
from state.store.postgres import PgDatabase
from state.writer import CallRecord, RecordWriter
from tests.postgres import PostgresServer

NOW = datetime(2026, 12, 4, 21, 30, tzinfo=UTC)
MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5", "gpt-5")


@pytest.fixture(autouse=True)
def _pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "clock", lambda: NOW)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _history(path: Path, calls: int = 240) -> None:
    """Calls over three days, by three clients and models, some failed, some in Claude Code sessions, with
    costs that only add up exactly as decimals; rate limits; the pool's history; a budget and its holds."""
    db = connect(path)
    db.close()
    writer = RecordWriter(lambda: connect(path))
    writer.start()
    for n in range(calls):
        started = NOW - timedelta(hours=n * 0.3)
        record = CallRecord(
            row={
                "id": f"call-{n:04d}",
                "started_at": started.isoformat(timespec="microseconds"),
                "client": ("alice", "bob", "ci")[n % 3],
                "host": "api.anthropic.com",
                "method": "POST",
                "path": "/v1/messages",
                "provider": "anthropic",
                "api": "count_tokens" if n % 17 == 0 else "messages",
                "model": MODELS[n % len(MODELS)],
                "stream": n % 2,
                "status": 429 if n % 11 == 0 else 200,
                "error": "overloaded_error: busy" if n % 13 == 0 else None,
                "input_tokens": 1000 + n,
                "cache_read_tokens": 20 * n,
                "cache_write_5m_tokens": n % 7,
                "output_tokens": 50 + n % 30,
                "cost_usd": None if n % 19 == 0 else (0.1, 0.2, 0.0140001, 1e-05)[n % 4],
                "session_id": f"session-{n // 20}" if n % 2 else None,
                "region": "us-east-1" if n % 5 == 0 else None,
            }
            | ({"error": "odd \x00 byte"} if n == 5 else {}),
            rate_limits=[("anthropic-ratelimit-requests-remaining", str(1000 - n))],
            host="api.anthropic.com",
            credential=f"key-{n % 2}",
            observed_at=started.isoformat(timespec="microseconds"),
        )
        writer.put(record)
    assert writer.flush(timeout=30)
    writer.close()
    db = connect(path)
    for n in range(30):
        db.conn.execute(
            "insert into credential_events (at, host, fingerprint, label, event) values (?, ?, ?, ?, ?)",
            (NOW.timestamp() - n, "api.anthropic.com", f"fp-{n % 2}", f"key-{n % 2}", "cooling"),
        )
    for n, state in enumerate(("active", "cooling", "disabled")):
        db.conn.execute(
            "insert into credentials (host, fingerprint, label, position, state, reason, cooling_until,"
            " changed_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "api.anthropic.com",
                f"fp-{n}",
                f"key-{n}",
                n,
                state,
                None if n == 0 else f"{state}: 4xx",
                NOW.timestamp() + 600 if state == "cooling" else None,
                NOW.timestamp() - 60,
            ),
        )
    db.conn.execute("insert into budgets (client, usd, period, updated_at) values ('alice', 20, 'day', 0)")
    db.conn.execute(
        "insert into team_budgets (team, usd, period, members, updated_at)"
        " values ('platform', 50, 'day', '[\"alice\", \"bob\"]', 0)"
    )
    db.conn.execute(
        "insert into budget_holds (id, client, period_key, amount_usd, state, created_at)"
        " values ('call-0001', 'alice', 'day:2026-12-04', 0.2, 'settled', 0)"
    )
    db.close()


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.db"
    _history(path)
    return path


REPORTS = [
    ("usage",),
    ("usage", "--json"),
    ("usage", "--by", "client,model", "--csv"),
    ("usage", "--by", "day,client", "--json"),
    ("usage", "--by", "hour", "--csv", "--since", "2026-12-03"),
    ("usage", "--by", "session", "--json"),
    ("usage", "--by", "block,model", "--csv"),
    ("usage", "--by", "provider,region,api", "--json", "--until", "2026-12-04"),
    ("quota", "--json"),
    ("quota",),
    ("credentials", "--json"),
    ("credentials", "--events", "--json"),
    ("credentials", "--events"),
    ("clients", "--json"),
    ("clients",),
    ("teams", "--json"),
]


def test_every_report_reads_the_same_from_postgresql_after_a_migrate(
    history: Path, postgres_server: PostgresServer, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "migrate", "--from", str(history), "--to", postgres_url)
    assert code == 0, err
    assert postgres_server.password not in out + err
    assert "calls" in out and "240" in out

    for argv in REPORTS:
        on_sqlite = run(capsys, *argv, "--db", str(history))
        on_postgres = run(capsys, *argv, "--db", postgres_url)
        assert on_sqlite[0] == on_postgres[0] == 0, (argv, on_sqlite, on_postgres)
        assert on_postgres[1] == on_sqlite[1].replace(str(history), postgres_url), argv
        assert postgres_server.password not in on_postgres[1] + on_postgres[2]
    totals = json.loads(run(capsys, "usage", "--by", "provider", "--json", "--db", postgres_url)[1])
    assert (
        totals[0]["cost_usd"]
        == json.loads(run(capsys, "usage", "--by", "provider", "--json", "--db", str(history))[1])[0][
            "cost_usd"
        ]
    )


def test_the_html_report_is_the_same_from_either_engine(
    history: Path, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "migrate", "--from", str(history), "--to", postgres_url)[0] == 0
    pages = []
    for db in (str(history), postgres_url):
        page = tmp_path / f"{len(pages)}.html"
        assert run(capsys, "usage", "--html", str(page), "--db", db)[0] == 0
        pages.append(page.read_text())
    assert pages[0] == pages[1] and "claude-sonnet-4-6" in pages[0]


def test_migrating_twice_adds_nothing(
    history: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "migrate", "--from", str(history), "--to", postgres_url)[0] == 0
    code, _, _ = run(capsys, "migrate", "--from", str(history), "--to", postgres_url)
    assert code == 0
    with psycopg.connect(postgres_url) as conn:
        counts = {
            table: conn.execute(f"select count(*) from {table}").fetchone()[0]  # type: ignore[index]
            for table in move.TABLES
        }
    assert counts["calls"] == 240 and counts["rate_limits"] == 2 and counts["credential_events"] == 30
    assert counts["budgets"] == 1 and counts["budget_holds"] == 1


def test_a_migrate_that_stopped_half_way_is_completed_by_running_it_again(
    history: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    class Interrupted(Exception):
        pass

    def stop_after_two_batches(moved: move.Moved) -> None:
        if moved.table == "calls" and moved.read >= 100:
            raise Interrupted

    source = connect(history)
    store = open_store(postgres_url)
    target = store.connect()
    assert isinstance(target, PgDatabase)
    with pytest.raises(Interrupted):
        move.move_history(source, target, batch_rows=50, progress=stop_after_two_batches)
    target.close()
    store.close()
    source.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("select count(*) from calls").fetchone() == (100,)  # two batches committed

    code, _, _ = run(capsys, "migrate", "--from", str(history), "--to", postgres_url)
    assert code == 0
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("select count(*), count(distinct id) from calls").fetchone() == (240, 240)


def test_the_pool_history_keeps_counting_after_the_moved_rows(
    history: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "migrate", "--from", str(history), "--to", postgres_url)[0] == 0
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "insert into credential_events (at, host, event) values (0, 'api.anthropic.com', 'added')"
            " returning id"
        ).fetchone()
    assert row is not None and row[0] > 30


def test_the_reports_refuse_a_postgresql_database_that_is_not_sluices_and_leave_it_untouched(
    postgres_server: PostgresServer, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "usage", "--db", postgres_url)
    assert code == 1 and "has no sluice tables" in err
    assert postgres_server.password not in out + err and "***" in err
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("select to_regclass('public.calls')").fetchone() == (None,)


def test_migrate_wants_a_postgresql_target(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "migrate", "--from", str(history), "--to", str(tmp_path / "other.db"))
    assert code == 1 and "a PostgreSQL URL" in err
