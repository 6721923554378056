"""The PostgreSQL engine (state/store/postgres.py) against a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import psycopg
import pytest

from rules.call_outcome import is_error
from state.store import PostgresStore, Store, open_store, redact
from state.store import postgres as pg
from state.writer import PIPELINED_ROWS, CallRecord, RecordWriter, _commit_postgres
from tests.postgres import PostgresServer

DEADLINE_S = 60


def _row(n: int = 0, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "started_at": f"2026-12-04T10:00:{n % 60:02d}.000000+00:00",
        "host": "api.anthropic.com",
        "path": "/v1/messages",
        "stream": 1,
        "status": 200,
        "input_tokens": n,
        "cost_usd": 0.001,
        "model": "claude-sonnet-4-6",
        "client": "alice",
    }
    row.update(fields)
    return row


def _record(n: int = 0, **fields: object) -> CallRecord:
    record = CallRecord(row=_row(n, **fields))
    record.host, record.credential = "api.anthropic.com", "key-1"
    record.observed_at = f"2026-12-04T10:00:{n % 60:02d}.000000+00:00"
    record.rate_limits = [("anthropic-ratelimit-requests-remaining", str(1000 - n))]
    return record


def _count(url: str, table: str = "calls") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select * from calls where id = ?", "select * from calls where id = %s"),
        ("select 'a%' like ?", "select 'a%%' like %s"),
        ("BEGIN IMMEDIATE", "begin"),
        (
            "insert or ignore into calls (id) values (?), (?)",
            "insert into calls (id) values (%s), (%s) on conflict do nothing",
        ),
    ],
)  # fmt: skip
def test_sqlite_spelled_sql_is_translated(sql: str, expected: str) -> None:
    assert pg.translate(sql) == expected


def test_insert_or_replace_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="ON CONFLICT"):
        pg.translate("insert or replace into budgets (client) values (?)")


def test_a_postgresql_url_opens_a_postgres_store_with_the_schema(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        assert isinstance(store, PostgresStore) and store.engine == "postgres"
        with store.reading() as db:
            tables = {row["table_name"] for row in db.query(
                "select table_name from information_schema.tables where table_schema = 'public'"
            )}  # fmt: skip
        assert {
            "calls",
            "rate_limits",
            "credentials",
            "budget_holds",
            "rate_admissions",
            "daily_usage",
        } <= tables
        assert isinstance(open_store(":memory:"), Store)
    finally:
        store.close()


def test_the_password_is_never_in_what_the_store_shows(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = open_store(postgres_url)
    try:
        assert postgres_server.password not in store.display and postgres_server.password not in repr(store)
        assert "***" in store.display
    finally:
        store.close()
    wrong = postgres_url.replace(postgres_server.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError) as refused:
        open_store(wrong)
    assert "not-the-password" not in str(refused.value) and postgres_server.password not in str(refused.value)
    assert postgres_server.password not in redact(postgres_url)


def test_migrations_are_applied_once_by_whichever_proxy_comes_first(postgres_url: str) -> None:
    barrier = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_and_migrate() -> None:
        barrier.wait()
        try:
            open_store(postgres_url).close()
        except BaseException as e:  # reported below: a thread's exception would only be a warning
            failures.append(e)

    threads = [threading.Thread(target=open_and_migrate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert failures == []
    with psycopg.connect(postgres_url) as conn:
        applied = conn.execute("select id, name from _sluice_migrations order by id").fetchall()
    assert applied == [(m.number, m.name) for m in pg.MIGRATIONS]


def test_the_views_count_errors_by_the_one_definition(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        rows = [
            _row(1, status=200),
            _row(2, status=429),
            _row(3, status=None, error="connection lost"),
            _row(4, status=200, error="stream cut"),
        ]
        writer = RecordWriter(store.connect)
        writer.start()
        for row in rows:
            writer.put(CallRecord(row=row))
        assert writer.flush(timeout=DEADLINE_S)
        writer.close()
        with store.reading() as db:
            [daily] = list(db.query("select calls, errors, cost_usd from daily_usage"))
            [model] = list(db.query("select errors, calls from model_usage"))
            errors = {row["id"] for row in db.query("select id from errors")}
        assert daily == {"calls": 4, "errors": sum(map(is_error, rows)), "cost_usd": 0.004}
        assert model == {"errors": 3, "calls": 4}
        assert errors == {row["id"] for row in rows if is_error(row)}
    finally:
        store.close()


def test_the_writer_writes_rows_rate_limits_and_settlements_once(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        records = [_record(n) for n in range(300)]
        with store.reading() as db:
            db.conn.execute(
                "insert into budget_holds (id, client, period_key, amount_usd, state, created_at)"
                " values (?, 'alice', 'day:2026-12-04', 0.05, 'held', 0)",
                (records[0].row["id"],),
            )
        records[0].budget = ("settled", 0.001)
        writer = RecordWriter(store.connect, in_flight=lambda: 1)
        writer.start()
        for record in [*records, records[5], records[6]]:  # the same call twice is still one row
            writer.put(record)
        assert writer.flush(timeout=DEADLINE_S)
        writer.close()
        assert _count(postgres_url) == 300
        with psycopg.connect(postgres_url) as conn:
            limits = conn.execute("select value from rate_limits").fetchall()
            hold = conn.execute("select state, amount_usd from budget_holds").fetchone()
        assert limits == [(str(1000 - 299),)]  # the newest observation of the header
        assert hold == ("settled", 0.001)
    finally:
        store.close()


def test_a_value_postgresql_text_cannot_hold_still_gets_its_row(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        writer = RecordWriter(store.connect)
        writer.start()
        odd = _record(1, error="upstream said \x00 and \udcff", input_tokens=2**70)
        writer.put(odd)
        writer.put(_record(2))
        assert writer.flush(timeout=DEADLINE_S)
        writer.close()
        with psycopg.connect(postgres_url) as conn:
            stored = conn.execute(
                "select error, input_tokens from calls where id = %s", (odd.row["id"],)
            ).fetchone()
        assert stored is not None and stored[1] is None and "\x00" not in stored[0]
        assert stored[0].startswith("upstream said ") and _count(postgres_url) == 2
    finally:
        store.close()


def test_rows_written_while_postgresql_is_down_are_held_and_land_once_it_is_back(
    start_postgres, caplog: pytest.LogCaptureFixture
) -> None:
    server: PostgresServer = start_postgres()
    url = server.create_database()
    store = open_store(url)
    try:
        writer = RecordWriter(store.connect, retry_initial_s=0.05, retry_max_s=0.2)
        writer.start()
        writer.put(_record(0))
        assert writer.flush(timeout=DEADLINE_S)
        server.stop()
        with caplog.at_level("WARNING", logger="sluice"):
            held = [_record(n) for n in range(1, 51)]
            for record in held:
                writer.put(record)
            deadline = time.monotonic() + DEADLINE_S
            while writer.stats.failures == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert writer.stats.failures > 0 and writer.backlog()[1] == 50  # held in memory, not lost
            server.start()
            assert writer.flush(timeout=DEADLINE_S)
        writer.close()
        assert _count(url) == 51 and writer.stats.dropped == 0
        assert "records held in memory" in caplog.text and server.password not in caplog.text
    finally:
        store.close()


def _write_from_another_process(url: str, first: int, count: int) -> None:
    store = open_store(url)
    writer = RecordWriter(store.connect)
    writer.start()
    for n in range(first, first + count):
        writer.put(CallRecord(row=_row(n, id=f"call-{n:05d}")))
    writer.close()
    store.close()


def test_proxies_in_several_processes_write_to_one_database_without_loss_or_duplicates(
    postgres_url: str,
) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_write_from_another_process, args=(postgres_url, first, 200))
        for first in (0, 100, 300)  # overlapping ids: 100-199 written by two of them
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(DEADLINE_S)
        assert worker.exitcode == 0
    assert _count(postgres_url) == 500


def test_a_hostile_providers_values_keep_every_row_through_copy_and_json(postgres_url: str) -> None:
    """Past PIPELINED_ROWS the calls go by COPY and the rate limits by one JSON parameter: a NUL or a lone
    surrogate in a header's name or value, or an integer past 64 bits, still costs no row."""
    store = open_store(postgres_url)
    try:
        writer = RecordWriter(store.connect)
        odd = _record(0, error="bad \x00 byte \udcff", output_tokens=-(2**80))
        odd.rate_limits = [("x-ratelimit-\x00evil\udcff", "1\x00"), ("x-ratelimit-ok", "\udcfe" * 10_000)]
        odd.host, odd.credential, odd.observed_at = "h", "c", "2026-11-23T10:00:00+00:00"
        writer.put(odd)
        for n in range(1, PIPELINED_ROWS * 2):
            writer.put(_record(n))
        writer.start()
        assert writer.flush(timeout=DEADLINE_S)
        writer.close()
        assert _count(postgres_url) == PIPELINED_ROWS * 2 and writer.stats.dropped == 0
        with psycopg.connect(postgres_url) as conn:
            headers = conn.execute(
                "select header, value from rate_limits where host = 'h' order by header"
            ).fetchall()
        assert dict(headers) == {
            "x-ratelimit-\ufffdevil\ufffd": "1\ufffd",
            "x-ratelimit-ok": "\ufffd" * 10_000,
        }
    finally:
        store.close()


def test_two_proxies_writing_the_same_rate_limits_in_opposite_orders_never_deadlock(
    postgres_url: str,
) -> None:
    """Each proxy's batch upserts the rate-limit rows it saw, in the order it saw them: two batches naming
    the same rows in opposite orders would each hold a row the other waits for (PostgreSQL then aborts one
    after a second, and its rows wait for a retry). Written in one order, they queue instead."""
    store = open_store(postgres_url)
    headers = [f"x-ratelimit-{n:03d}" for n in range(200)]
    errors: list[BaseException] = []

    def write(order: list[str]) -> None:
        db = store.connect()
        try:
            for round_ in range(15):
                rows = [
                    ("h", "c", header, str(round_), f"2026-12-04T10:00:{round_:02d}", "call")
                    for header in order
                ]
                _commit_postgres(db.conn, [], [], rows, [], [])
        except psycopg.Error as e:
            errors.append(e)
        finally:
            db.close()

    try:
        threads = [threading.Thread(target=write, args=(order,)) for order in (headers, headers[::-1])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE_S)
        assert errors == []
    finally:
        store.close()
