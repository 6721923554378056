import sqlite3
import threading
import time
import uuid

import pytest

from state import store as sluice_db
from state.writer import CallRecord, QuotaRecord, RecordWriter, SandboxEvent


def _record(n: int = 0, **row):
    base = {
        "id": str(uuid.uuid4()),
        "started_at": f"2026-11-23T10:00:{n % 60:02d}+00:00",
        "host": "api.anthropic.com",
        "path": "/v1/messages",
        "stream": 1,
        "input_tokens": n,
    }
    base.update(row)
    return CallRecord(row=base)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "sluice.db"


def _count(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("select count(*) from calls").fetchone()[0]


def test_every_record_is_written_once(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path))
    writer.start()
    records = [_record(i) for i in range(5000)]
    for record in records:
        writer.put(record)
    writer.put(records[0])  # the same call again must not become a second row
    writer.close()
    assert _count(db_path) == 5000
    assert writer.stats.written == 5001 and writer.stats.dropped == 0


def test_flush_waits_until_written(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path))
    writer.start()
    writer.put(_record(1))
    assert writer.flush(timeout=5)
    assert _count(db_path) == 1
    writer.close()


def test_locked_database_delays_but_loses_nothing(db_path):
    sluice_db.connect(db_path)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("begin exclusive")
    writer = RecordWriter(lambda: sluice_db.connect(db_path, busy_timeout_ms=50), retry_initial_s=0.05)
    writer.start()
    for i in range(100):
        writer.put(_record(i))
    time.sleep(0.5)
    assert writer.stats.failures >= 1
    blocker.execute("rollback")
    blocker.close()
    assert writer.flush(timeout=10)
    writer.close()
    assert _count(db_path) == 100


def test_memory_bound_drops_oldest_and_says_so(db_path, caplog):
    sluice_db.connect(db_path)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("begin exclusive")
    writer = RecordWriter(
        lambda: sluice_db.connect(db_path, busy_timeout_ms=20), buffer_limit=10, retry_initial_s=0.02
    )
    writer.start()
    for i in range(30):
        writer.put(_record(i))
    deadline = time.monotonic() + 5
    while writer.stats.dropped < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    blocker.execute("rollback")
    blocker.close()
    writer.close()
    assert writer.stats.dropped == 20
    assert _count(db_path) == 10
    assert "dropped" in caplog.text


def test_two_writers_share_one_database(db_path):
    writers = [RecordWriter(lambda: sluice_db.connect(db_path)) for _ in range(2)]
    for writer in writers:
        writer.start()

    def feed(writer):
        for i in range(2000):
            writer.put(_record(i))

    threads = [threading.Thread(target=feed, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        writer.close()
    assert _count(db_path) == 4000


def test_latest_rate_limit_wins(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path))
    writer.start()
    newer = _record(1)
    newer.host, newer.credential, newer.observed_at = (
        "api.anthropic.com",
        "key#1",
        "2026-11-23T10:00:02+00:00",
    )
    newer.rate_limits = [("anthropic-ratelimit-requests-remaining", "41")]
    older = _record(2)
    older.host, older.credential, older.observed_at = (
        "api.anthropic.com",
        "key#1",
        "2026-11-23T10:00:01+00:00",
    )
    older.rate_limits = [("anthropic-ratelimit-requests-remaining", "42")]
    writer.put(newer)
    writer.put(older)
    writer.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("select value from rate_limits").fetchall() == [("41",)]


def test_a_quota_reading_without_a_call_merges_with_the_calls_headers_newest_first(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path))
    writer.start()
    call = _record(1)
    call.host, call.credential, call.observed_at = ("api.anthropic.com", "oauth", "2026-11-23T10:00:01+00:00")
    call.rate_limits = [
        ("anthropic-ratelimit-unified-5h-utilization", "0.5"),
        ("anthropic-ratelimit-unified-status", "allowed"),
    ]
    reading = QuotaRecord(
        host="api.anthropic.com",
        credential="oauth",
        rate_limits=[("anthropic-ratelimit-unified-5h-utilization", "0.61")],
        observed_at="2026-11-23T10:00:02+00:00",
        source="oauth-usage",
    )
    writer.put(call)
    writer.put(reading)
    writer.close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("select header, value, call_id from rate_limits order by header").fetchall()
    assert rows == [
        ("anthropic-ratelimit-unified-5h-utilization", "0.61", "oauth-usage"),
        ("anthropic-ratelimit-unified-status", "allowed", call.row["id"]),
    ]
    assert _count(db_path) == 1  # the reading is no call
    assert writer.stats.written == 2 and writer.stats.dropped == 0


def test_values_sqlite_cannot_take_do_not_cost_the_row(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path))
    writer.start()
    odd = _record(1, session_id="caf\udce9-session", output_tokens=10**30)
    odd.rate_limits = [("x-ratelimit-remaining-requests", "9\udcff")]
    odd.host, odd.credential, odd.observed_at = "h", "c", "2026-11-23T10:00:00+00:00"
    writer.put(odd)
    writer.put(_record(2))
    writer.close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("select session_id, output_tokens from calls order by input_tokens").fetchall()
    assert rows == [("caf\ufffd-session", None), (None, None)]
    assert writer.stats.dropped == 0


def test_a_locked_database_during_the_one_by_one_fallback_does_not_stop_the_writer(db_path):
    sluice_db.connect(db_path)
    writer = RecordWriter(lambda: sluice_db.connect(db_path, busy_timeout_ms=50), retry_initial_s=0.05)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    writer.start()
    bad = _record(1)
    bad.row = {**bad.row, "input_tokens": object()}  # a value no database takes: forces the fallback
    blocker.execute("begin exclusive")  # ...which then meets a locked database
    writer.put(bad)
    writer.put(_record(2))
    time.sleep(0.5)
    blocker.execute("rollback")
    blocker.close()
    assert writer.flush(timeout=10)
    writer.close()
    assert _count(db_path) == 1  # the good record landed; only the bad one was dropped
    assert writer.stats.dropped == 1


class _LockedOnce:
    """A connection that reports "database is locked" on exactly one BEGIN (the `nth`)."""

    def __init__(self, conn, nth):
        self._conn, self._nth, self._begins = conn, nth, 0

    def execute(self, sql, *args):
        if sql.startswith("begin"):
            self._begins += 1
            if self._begins == self._nth:
                raise sqlite3.OperationalError("database is locked")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_database_trouble_during_the_one_by_one_fallback_is_waited_out(db_path):
    real = sluice_db.connect(db_path)

    class Db:
        conn = _LockedOnce(real.conn, nth=2)  # 1: the batch (a bad record), 2: the first record on its own

    writer = RecordWriter(lambda: Db(), retry_initial_s=0.01)
    writer.start()
    bad = _record(1)
    bad.row = {**bad.row, "input_tokens": object()}
    writer.put(bad)
    writer.put(_record(2))
    assert writer.flush(timeout=10)
    writer.close()
    assert _count(db_path) == 1 and writer.stats.dropped == 1


class _RoomFor:
    """A connection on a disk with room for transactions of at most `rows` records; logs every size tried."""

    def __init__(self, conn, rows):
        self._conn, self._rows, self.tried = conn, rows, []

    def execute(self, sql, parameters=()):
        if sql.lstrip().startswith("insert or ignore into calls"):
            rows = sql.count("(?")  # the writer inserts a batch's rows in one statement
            self.tried.append(rows)
            if rows > self._rows:
                raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, parameters)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_nearly_full_disk_still_takes_smaller_transactions(db_path):
    real = sluice_db.connect(db_path)
    conn = _RoomFor(real.conn, rows=300)

    class Db:
        pass

    Db.conn = conn
    writer = RecordWriter(lambda: Db(), batch_max=2000, retry_initial_s=0.01)
    for i in range(1500):  # queued before the thread starts: the first transaction holds all of them
        writer.put(_record(i))
    writer.start()
    assert writer.flush(timeout=10)
    writer.close()

    assert _count(db_path) == 1500
    # 1500 refused, then a quarter each time until one fits; after each success the size doubles again.
    assert conn.tried[:4] == [1500, 500, 125, 250]
    assert max(conn.tried[1:]) <= 500


@pytest.mark.parametrize("journal_too", [False, True])
def test_a_database_deleted_while_open_is_created_again(db_path, caplog, journal_too):
    writer = RecordWriter(lambda: sluice_db.connect(db_path), path=db_path)
    writer.start()
    writer.put(_record(1))
    assert writer.flush(timeout=5)
    db_path.unlink()
    if journal_too:
        for suffix in ("-wal", "-shm"):
            db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
    with caplog.at_level("ERROR", logger="sluice"):
        second = _record(2)
        writer.put(second)
        assert writer.flush(timeout=5)
    writer.close()
    with sqlite3.connect(db_path) as conn:
        assert [row[0] for row in conn.execute("select id from calls")] == [second.row["id"]]
    assert f"the database {db_path} was deleted or replaced while sluice had it open" in caplog.text


def test_rows_held_while_the_database_refused_end_up_in_the_file_not_the_wal(db_path):
    """A backlog drained into the WAL alone could fill the disk that just got room back (the WAL is
    checkpointed only at 4 MB, and not at all once the file has no room to grow): it is checkpointed batch
    by batch instead."""
    sluice_db.connect(db_path).close()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("begin exclusive")
    writer = RecordWriter(
        lambda: sluice_db.connect(db_path, busy_timeout_ms=20), batch_max=256, retry_initial_s=0.02
    )
    writer.start()
    for i in range(1000):
        writer.put(_record(i))
    deadline = time.monotonic() + 5
    while writer.stats.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.stats.failures >= 1
    blocker.execute("rollback")
    blocker.close()
    assert writer.flush(timeout=10)

    wal = db_path.with_name(db_path.name + "-wal")
    deadline = time.monotonic() + 5  # the checkpoint follows the batch that flush() waited for
    while wal.stat().st_size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert wal.stat().st_size == 0  # checkpointed and truncated
    writer.close()
    assert _count(db_path) == 1000


def test_a_database_replaced_under_the_writer_gets_the_rows_and_none_of_the_old_journal(db_path, caplog):
    writer = RecordWriter(lambda: sluice_db.connect(db_path), path=db_path)
    writer.start()
    writer.put(_record(1))
    assert writer.flush(timeout=5)
    replacement = db_path.with_name("restored.db")
    sluice_db.connect(replacement).conn.close()
    replacement.replace(db_path)  # e.g. a backup restored over it, while the old file's WAL is still there
    with caplog.at_level("ERROR", logger="sluice"):
        second = _record(2)
        writer.put(second)
        assert writer.flush(timeout=5)
    writer.close()
    with sqlite3.connect(db_path) as conn:
        assert [row[0] for row in conn.execute("select id from calls")] == [second.row["id"]]
    assert "was deleted or replaced" in caplog.text


def test_backlog_counts_rows_held_in_memory_only_while_the_database_refuses(tmp_path) -> None:
    refusing = True

    def open_db():
        if refusing:
            raise sqlite3.OperationalError("database is locked")
        return sluice_db.connect(tmp_path / "sluice.db")

    writer = RecordWriter(open_db, retry_initial_s=0.01, retry_max_s=0.02)
    writer.start()
    for index in range(3):
        writer.put(CallRecord(row={"id": f"r{index}", "started_at": "2026-12-04T00:00:00+00:00"}))
    deadline = time.monotonic() + 10
    while writer.backlog() != (0, 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.backlog() == (0, 3)
    refusing = False
    assert writer.flush()
    assert writer.backlog() == (0, 0)
    writer.close()


def test_sandbox_events_go_to_their_own_table_in_the_same_batches(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path))
    writer.start()
    event = {
        "id": "e1",
        "at": "2026-12-04T10:00:00+00:00",
        "kind": "dns",
        "host": "evil.example",
        "port": 53,
        "client_address": "10.201.0.2",
        "reason": "not on the allow-list",
    }
    writer.put(_record(1))
    writer.put(SandboxEvent(event))
    writer.put(SandboxEvent({**event, "host": "caf\udce9.example"}))  # not UTF-8
    writer.put(_record(2))
    writer.close()
    assert _count(db_path) == 2
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("select id, kind, host, port, reason from sandbox_events").fetchall()
    assert rows == [("e1", "dns", "evil.example", 53, "not on the allow-list")]  # same id: kept once


def test_while_other_calls_are_in_flight_their_rows_are_written_in_one_transaction(db_path):
    # A wait far longer than the test: the batch is written when it is full, not when the wait ends.
    writer = RecordWriter(
        lambda: sluice_db.connect(db_path), batch_max=3, group_wait_s=60, in_flight=lambda: 2
    )
    writer.start()
    for n in range(3):
        writer.put(_record(n))
    assert writer.flush(timeout=10)
    assert _count(db_path) == 3 and writer.stats.batches == 1
    writer.close()


def test_a_lone_calls_row_is_written_at_once(db_path):
    writer = RecordWriter(lambda: sluice_db.connect(db_path), group_wait_s=60, in_flight=lambda: 0)
    writer.start()
    writer.put(_record(1))
    assert writer.flush(timeout=10)  # not held for the group wait: no other call is in flight
    assert _count(db_path) == 1
    writer.close()


def _statements(db_path, records, variable_limit: int | None = None) -> list[str]:
    """The statements the writer runs to write `records`, queued before it starts (one batch)."""
    db = sluice_db.connect(db_path)
    if variable_limit is not None:
        db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variable_limit)
    run: list[str] = []
    db.conn.set_trace_callback(run.append)
    writer = RecordWriter(lambda: db)
    for record in records:
        writer.put(record)
    writer.start()
    assert writer.flush(timeout=10)
    writer.close()
    return [sql.lstrip() for sql in run if sql.lstrip().startswith("insert")]


def _limited(n: int) -> CallRecord:
    record = _record(n)
    record.host, record.credential = "api.anthropic.com", f"key-{n}"
    record.observed_at = "2026-11-23T10:00:00+00:00"
    record.rate_limits = [("anthropic-ratelimit-requests-remaining", str(n))]
    return record


def test_a_batch_is_inserted_with_one_statement_per_table(db_path):
    # sqlite3 lets the interpreter lock go around every statement step: one step a batch, not one a row.
    inserts = _statements(db_path, [_limited(n) for n in range(50)])
    assert [sql.split(" (")[0] for sql in inserts] == [
        "insert or ignore into calls",
        "insert into rate_limits",
    ]
    assert _count(db_path) == 50
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("select count(*) from rate_limits").fetchone()[0] == 50


def test_a_batch_over_the_parameter_limit_is_split_and_every_row_lands(db_path):
    width = len(sluice_db.CALL_COLUMNS)
    inserts = _statements(db_path, [_limited(n) for n in range(25)], variable_limit=width * 10)
    assert sum(sql.startswith("insert or ignore into calls") for sql in inserts) == 3  # 10 + 10 + 5 rows
    assert _count(db_path) == 25
    with sqlite3.connect(db_path) as conn:
        values = {row[0] for row in conn.execute("select value from rate_limits")}
    assert values == {str(n) for n in range(25)}
