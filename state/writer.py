"""One writer thread per process: hooks enqueue records, the thread writes them in batched transactions.

A synchronous commit inside a mitmproxy hook stalls every flow, so hooks only `put()`. The thread groups
whatever has queued up into one `BEGIN IMMEDIATE` transaction. When the database refuses (locked past the
busy timeout, disk full, read-only), records stay in memory up to `buffer_limit` and are retried with
backoff; a loud warning says so. Each failure also quarters the next transaction (down to
`MIN_RETRY_BATCH` records, doubling back after each success): a disk with a little space left still takes
small transactions when one of thousands of records would never fit. Not smaller than that: every
transaction rewrites whole pages of the table and its indexes, so one record per transaction would take
several times its own size in the WAL. Rows are keyed by the call id and inserted with `insert or ignore`,
so a retried batch never duplicates a row. While such a backlog drains, each batch is checkpointed out of
the WAL (`_checkpoint`), so the disk that got room back holds the rows once, not twice.

Given the database's `path`, the writer checks before each transaction that the file it has open is still
the file at that path: a database deleted (or replaced) under a running proxy would otherwise swallow every
later row into an unlinked file. It says so loudly and creates the database anew at the path, leaving the
deleted file's journal files behind it, so the rows go where reports and datasette look.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from state.budgets import SETTLE_SQL
from state.rates import SETTLE_RATE_SQL
from state.store import Database
from state.store.migrations import CALL_COLUMNS, SANDBOX_EVENT_COLUMNS
from state.store.postgres import PgConnection, copy_new_rows
from state.threads import name_this_thread

log = logging.getLogger("sluice")

# Multi-row inserts: `{values}` stands for as many `(?, ...)` groups as a statement carries (`_insert_rows`).
_CALL_SQL = "insert or ignore into calls ({}) values {{values}}".format(", ".join(CALL_COLUMNS))
_SANDBOX_EVENT_SQL = "insert or ignore into sandbox_events ({}) values {{values}}".format(
    ", ".join(SANDBOX_EVENT_COLUMNS)
)
# One row each, for PostgreSQL's pipelined batches (`_commit_postgres`).
_ONE_CALL_SQL = _CALL_SQL.format(values="(" + ", ".join("?" * len(CALL_COLUMNS)) + ")")
_ONE_SANDBOX_EVENT_SQL = _SANDBOX_EVENT_SQL.format(
    values="(" + ", ".join("?" * len(SANDBOX_EVENT_COLUMNS)) + ")"
)
# Keep the newest observation per (host, credential, header); an older record arriving late loses.
_RATE_LIMIT_SQL = """
insert into rate_limits (host, credential, header, value, observed_at, call_id)
values {values}
on conflict (host, credential, header) do update set
    value = excluded.value, observed_at = excluded.observed_at, call_id = excluded.call_id
where excluded.observed_at >= rate_limits.observed_at
"""
_RATE_LIMITS_FROM_JSON_SQL = """
insert into rate_limits (host, credential, header, value, observed_at, call_id)
select r->>0, r->>1, r->>2, r->>3, r->>4, r->>5 from jsonb_array_elements(%s::jsonb) as r
on conflict (host, credential, header) do update set
    value = excluded.value, observed_at = excluded.observed_at, call_id = excluded.call_id
where excluded.observed_at >= rate_limits.observed_at
"""


@dataclass(slots=True)
class CallRecord:
    """One finished call: its `calls` row and the rate-limit headers it carried."""

    row: Mapping[str, Any]
    rate_limits: Sequence[tuple[str, str]] = ()
    host: str = ""
    credential: str = ""
    observed_at: str = ""
    # Settle this call's budget hold with the row: ("settled", cost) or ("refunded", 0.0).
    budget: tuple[str, float] | None = None
    # Settle this call's rate admission with the row: (input tokens, output tokens) it used, None where no
    # usage was seen (its estimate stands).
    rate: tuple[int | None, int | None] | None = None


@dataclass(slots=True)
class QuotaRecord:
    """Rate limits read without a call (the provider's OAuth usage endpoint): `rate_limits` rows only, merged
    with the headers of calls by the same newest-wins rule; `source` goes where a call's id would
    (`rate_limits.call_id`), so the two can be told apart."""

    host: str
    credential: str
    rate_limits: Sequence[tuple[str, str]]
    observed_at: str
    source: str


@dataclass(frozen=True, slots=True)
class SandboxEvent:
    """What a sandbox's egress policy refused (addons/sandbox.py): one `sandbox_events` row, keyed by `id`."""

    row: Mapping[str, Any]


type Record = CallRecord | QuotaRecord | SandboxEvent


@dataclass(slots=True)
class WriterStats:
    written: int = 0
    batches: int = 0
    failures: int = 0
    dropped: int = 0
    last_error: str | None = None
    pending: int = 0


_STOP = object()
MIN_RETRY_BATCH = 64
# How long the writer waits after a record for more to write with it (group commit), while other calls are
# in flight. A row, and the budget settlement in its transaction, lands up to this much later; in exchange a
# busy proxy appends to the WAL once per burst rather than once per call (bench/: file write system calls
# per request).
GROUP_WAIT_S = 0.02

# Errors that are one record's fault (a value no database can bind, a constraint it breaks), as opposed
# to the database's (locked, full, read-only, corrupt: sqlite3.OperationalError, DatabaseError, OSError),
# which are waited out. A record's fault must cost only that record, never the rows queued behind it.
_RECORD_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    psycopg.IntegrityError,
    psycopg.DataError,
    ValueError,
    TypeError,
    OverflowError,
)


class RecordWriter:
    def __init__(
        self,
        open_db: Callable[[], Database],
        *,
        batch_max: int = 2000,
        buffer_limit: int = 100_000,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        path: str | os.PathLike[str] | None = None,
        group_wait_s: float = GROUP_WAIT_S,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self._open_db = open_db
        self._group_wait_s = group_wait_s
        self._calls_in_flight = in_flight
        self._path = path
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the writer has open
        self._batch_max = batch_max
        self._batch_size = batch_max  # shrinks while the database refuses, grows back as it accepts
        self._buffer_limit = buffer_limit
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue: queue.SimpleQueue[Record | object] = queue.SimpleQueue()
        self._pending: deque[Record] = deque()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._in_flight = 0
        self._refused = False  # the database refused the last transaction: `_pending` is held, not in transit
        self.stats = WriterStats()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-writer", daemon=True)
            self._thread.start()

    def put(self, record: Record) -> None:
        """Never blocks: the record is queued for the writer thread."""
        with self._idle:
            self._in_flight += 1
        self._queue.put(record)

    def backlog(self) -> tuple[int, int]:
        """(records queued for the writer thread, records held in memory because the database refuses them).

        Read without a lock from any thread (metrics, alerts): each figure is a moment's, never exact."""
        return self._queue.qsize(), len(self._pending) if self._refused else 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put so far is written (or given up on). True when nothing is left."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue and stop the thread; whatever could not be written by then is reported lost."""
        if self._thread is None:
            return
        self._closing_deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        self._thread.join(timeout + 1)
        self._thread = None
        left = len(self._pending)
        if left:
            self.stats.dropped += left
            log.error("sluice: %d call records could not be written before shutdown and are lost", left)

    # -- the writer thread --------------------------------------------------------------------------

    _closing_deadline: float | None = None

    def _run(self) -> None:
        name_this_thread("sluice-writer")
        db: Database | None = None
        delay = self._retry_initial_s
        stopping = False
        recovering = False  # draining what was held while the database refused
        while not (stopping and not self._pending):
            if not self._pending:
                stopping |= self._accept(self._queue.get())
                if not stopping:
                    stopping |= self._gather()
            while not self._queue.empty():
                stopping |= self._accept(self._queue.get_nowait())
            if not self._pending:
                continue
            try:
                if db is not None and self._replaced():
                    self._let_go(db)
                    db = None
                if db is None:
                    db = self._open()
                self._write(db)
                self._refused = False
                delay = self._retry_initial_s
                self._batch_size = min(self._batch_max, self._batch_size * 2)
                if recovering:
                    _checkpoint(db)
                    recovering = bool(self._pending)
            except _RECORD_ERRORS as e:
                if db is None:
                    raise  # not a record's fault: opening failed; cannot happen for these types
                # The batch holds a record the database will not take; the database itself is fine.
                log.error("sluice: a batch of call records was refused (%r); writing them one by one", e)
                self._write_singly(db)
            except Exception as e:  # the database is locked, full, read-only, corrupt or gone
                self.stats.failures += 1
                self._refused = recovering = True
                self.stats.last_error = str(e)
                self._batch_size = max(min(MIN_RETRY_BATCH, self._batch_max), self._batch_size // 4)
                self._shed_overflow()
                log.warning(
                    "sluice: database write failed (%s); %d records held in memory, retrying in %.1fs",
                    e,
                    len(self._pending),
                    delay,
                )
                if stopping and self._closing_deadline and time.monotonic() > self._closing_deadline:
                    return
                time.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                db = None  # reopen: the file may have been replaced, or the handle be in a bad state

    def _gather(self) -> bool:
        """Group commit: while other calls are in flight (`in_flight`, read from the proxy), wait up to
        `group_wait_s` for their records after the first, so that one transaction (one append to the WAL)
        carries a burst's rows instead of one each. A lone call's row is written at once, as it always was.
        True when the stop signal came."""
        in_flight = self._calls_in_flight
        if in_flight is None or self._group_wait_s <= 0 or in_flight() < 1:
            return False
        deadline = time.monotonic() + self._group_wait_s
        while len(self._pending) < self._batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if self._accept(item):
                return True
        return False

    def _open(self) -> Database:
        db = self._open_db()
        self._file = _identity(self._path) if self._path is not None else None
        return db

    def _replaced(self) -> bool:
        """True when the path no longer names the file the writer has open (deleted, or replaced)."""
        if self._path is None or self._file is None:
            return False
        if _identity(self._path) == self._file:
            return False
        log.error(
            "sluice: the database %s was deleted or replaced while sluice had it open; creating it again "
            "(rows written since are in the new file; restart sluice so the credential pool and budgets "
            "use it too)",
            os.fspath(self._path),
        )
        return True

    def _let_go(self, db: Database) -> None:
        """Close the file that is no longer at the path, so that the next open creates (or takes) the file
        there without the old one's journal: the WAL is found by name, and replayed into whatever file
        bears that name next."""
        _checkpoint(db)  # the WAL emptied into the old file
        db.conn.close()
        path = os.fspath(self._path or "")
        if _identity(path) is None:  # deleted: its journal files are orphans now
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + suffix)

    def _accept(self, item: Record | object) -> bool:
        """Take one queued item; True when it is the stop signal."""
        if isinstance(item, CallRecord | QuotaRecord | SandboxEvent):
            self._pending.append(item)
            return False
        return item is _STOP

    def _shed_overflow(self) -> None:
        overflow = len(self._pending) - self._buffer_limit
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self.stats.dropped += overflow
            self._done(overflow)
            log.error(
                "sluice: database unavailable and %d records over the in-memory bound (%d); the oldest "
                "%d were dropped",
                overflow,
                self._buffer_limit,
                overflow,
            )

    def _write_singly(self, db: Database | None) -> None:
        """Write the pending records one transaction each; drop (and name) only those that fail."""
        if db is None:
            return
        batch_size, self._batch_size = self._batch_size, 1
        try:
            for _ in range(min(batch_size, len(self._pending))):
                try:
                    self._write(db)
                except _RECORD_ERRORS as e:
                    record = self._pending.popleft()
                    self.stats.dropped += 1
                    self._done(1)
                    log.error(
                        "sluice: call record %s could not be stored and is dropped: %r",
                        _call_id(record),
                        e,
                    )
                except Exception:
                    return  # the database itself is in trouble: the main loop waits it out and retries
        finally:
            self._batch_size = batch_size

    def _write(self, db: Database) -> None:
        batch = [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]
        try:
            self._commit(db, batch, storable=False)
        except (UnicodeEncodeError, OverflowError, psycopg.DataError):
            # Text that is not UTF-8 (or, for PostgreSQL, holds a NUL), or an integer over 64 bits: the batch
            # again, every value made storable
            # (checking every value of every row up front would cost most of the writer's time).
            self._commit(db, batch, storable=True)
        for _ in batch:
            self._pending.popleft()
        self.stats.written += len(batch)
        self.stats.batches += 1
        self.stats.pending = len(self._pending)
        self._done(len(batch))

    def _commit(self, db: Database, batch: list[Record], *, storable: bool) -> None:
        calls = [record for record in batch if isinstance(record, CallRecord)]
        events = [record for record in batch if isinstance(record, SandboxEvent)]
        call_rows = _rows(calls, CALL_COLUMNS, storable=storable)
        limit_rows = _newest_rate_limits([r for r in batch if isinstance(r, CallRecord | QuotaRecord)])
        if storable:
            limit_rows = [tuple(storable_value(value) for value in row) for row in limit_rows]
        settled_at = time.time()
        settle_rows = [
            (record.budget[0], record.budget[1], settled_at, record.row["id"])
            for record in calls
            if record.budget is not None
        ]
        rate_rows = [
            (settled_at, record.rate[0], record.rate[1], record.row["id"])
            for record in calls
            if record.rate is not None
        ]
        event_rows = _rows(events, SANDBOX_EVENT_COLUMNS, storable=storable)
        conn = db.conn
        if isinstance(conn, PgConnection):
            _commit_postgres(conn, call_rows, event_rows, limit_rows, settle_rows, rate_rows)
            return
        conn.execute("begin immediate")
        try:
            _insert_rows(conn, _CALL_SQL, call_rows)
            _insert_rows(conn, _SANDBOX_EVENT_SQL, event_rows)
            _insert_rows(conn, _RATE_LIMIT_SQL, limit_rows)
            if settle_rows:
                conn.executemany(SETTLE_SQL, settle_rows)
            if rate_rows:
                conn.executemany(SETTLE_RATE_SQL, rate_rows)
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise

    def _done(self, count: int) -> None:
        with self._idle:
            self._in_flight -= count
            if self._in_flight <= 0:
                self._in_flight = 0
                self._idle.notify_all()


_INT64 = 2**63


def _checkpoint(db: Database) -> None:
    """Move the WAL into the database file and truncate it, after each batch of a backlog.

    SQLite checkpoints on its own only once the WAL holds 1,000 pages (4 MB), and the WAL cannot be
    checkpointed when the database file has no room to grow. Draining a backlog held while the disk was full
    into the WAL alone could take all the space the disk has got back, and then neither the WAL nor the file
    could move again: the rows would stay in memory for good. Checkpointed batch by batch, the disk holds the
    rows once, in the database file, and at most one batch in the WAL. Best effort: a checkpoint that fails
    (readers in the way, the disk full again) leaves committed rows committed.
    """
    if isinstance(db.conn, PgConnection):
        return  # the server keeps its own write-ahead log
    try:
        db.conn.execute("pragma wal_checkpoint(truncate)").fetchall()
    except sqlite3.Error as e:
        log.debug("sluice: checkpoint after a held batch failed: %s", e)


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


# Up to this many new rows a batch goes in one round trip (psycopg's pipeline mode: the transaction's
# statements sent together, one sync); past it COPY streams them (COPY cannot run in a pipeline), a few round
# trips for any number of rows.
PIPELINED_ROWS = 64


def _commit_postgres(
    conn: PgConnection,
    call_rows: list[tuple[Any, ...]],
    event_rows: list[tuple[Any, ...]],
    limit_rows: list[tuple[Any, ...]],
    settle_rows: list[tuple[Any, ...]],
    rate_rows: list[tuple[Any, ...]],
) -> None:
    """One batch in one PostgreSQL transaction; a row already there (the same call twice) left as it is."""

    def write(copy: bool) -> None:
        conn.execute("begin")
        if copy:
            copy_new_rows(conn, "calls", list(CALL_COLUMNS), call_rows)
            copy_new_rows(conn, "sandbox_events", list(SANDBOX_EVENT_COLUMNS), event_rows)
        else:
            if call_rows:
                conn.executemany(_ONE_CALL_SQL, call_rows)
            if event_rows:
                conn.executemany(_ONE_SANDBOX_EVENT_SQL, event_rows)
        if limit_rows:
            # One statement for all of them, one JSON parameter taken apart by the server: a row's two dozen
            # headers would otherwise be two dozen statements (or arrays) for the client library to build,
            # in Python, while the event loop waits for the interpreter lock.
            # Sorted by key: every proxy's writer locks the rows it upserts in the same order, so two batches
            # naming the same rows queue rather than deadlock (PostgreSQL would abort one after a second).
            ordered = sorted(limit_rows, key=lambda row: (row[0], row[1], row[2]))
            conn.raw.execute(_RATE_LIMITS_FROM_JSON_SQL, (json.dumps(ordered),))
        if settle_rows:
            conn.executemany(SETTLE_SQL, settle_rows)
        if rate_rows:
            conn.executemany(SETTLE_RATE_SQL, rate_rows)
        conn.execute("commit")

    try:
        if len(call_rows) + len(event_rows) > PIPELINED_ROWS:
            write(copy=True)
        else:
            with conn.raw.pipeline():
                write(copy=False)
    except BaseException:
        if conn.in_transaction:
            conn.raw.execute("rollback")
        raise


def _insert_rows(conn: sqlite3.Connection, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """`rows` into `statement` (with `{values}` for its groups of parameters) in as few statements as
    SQLite's limit on parameters allows. One multi-row statement is stepped once, where `executemany`
    steps once a row; sqlite3 lets the interpreter lock go around every step, and on a busy proxy each of
    those hands the lock to the event loop and back (measured: the writer thread then cost the loop
    0.27 ms a call in CPU). A statement's rows are in one transaction with the batch, as before."""
    if not rows:
        return
    width = len(rows[0])
    per_statement = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    group = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        sql = statement.format(values=", ".join([group] * len(chunk)))
        conn.execute(sql, [value for row in chunk for value in row])


def _rows(
    batch: Sequence[CallRecord | SandboxEvent], columns: Mapping[str, type], *, storable: bool
) -> list[tuple[Any, ...]]:
    if storable:
        return [tuple(storable_value(record.row.get(column)) for column in columns) for record in batch]
    return [tuple(map(record.row.get, columns)) for record in batch]


def storable_value(value: Any) -> Any:
    """A value either engine will take: text that is valid UTF-8 without NUL characters (PostgreSQL's text
    cannot hold one), integers that fit in 64 bits.

    Header values can carry bytes that are not UTF-8 (mitmproxy keeps them as surrogate escapes) or a NUL,
    and a provider can send absurd numbers; none may cost the call its row.
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if value.isascii():  # nearly every value: checked without copying it
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return value
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return None
    return value


def _call_id(record: Record) -> str:
    """What `rate_limits.call_id` names: the call, or where a reading without a call came from (and, in a log
    line, which sandbox event)."""
    if isinstance(record, QuotaRecord):
        return record.source
    return str(record.row.get("id"))


def _newest_rate_limits(batch: Sequence[CallRecord | QuotaRecord]) -> list[tuple[Any, ...]]:
    """One `rate_limits` row per (host, credential, header): the newest in the batch.

    `_RATE_LIMIT_SQL` keeps only the newest observation anyway, so upserting every call's copy of the same
    24 headers only to overwrite them again costs a statement each for nothing. Ties go to the later record,
    as they would in sequential upserts (`>=`). Only the winners become rows.
    """
    newest: dict[tuple[str, str, str], tuple[str, str, CallRecord | QuotaRecord]] = {}
    for record in batch:
        host, credential, observed_at = record.host, record.credential, record.observed_at
        for header, value in record.rate_limits:
            key = (host, credential, header)
            current = newest.get(key)
            if current is None or observed_at >= current[0]:
                newest[key] = (observed_at, value, record)
    return [
        (host, credential, header, value, observed_at, _call_id(record))
        for (host, credential, header), (observed_at, value, record) in newest.items()
    ]
