"""The SQLite engine: one file on one disk, shared by every process that opens it.

Several mitmdump processes may share one file: WAL lets readers run beside the one writer, `busy_timeout`
waits for a lock instead of failing, and read-then-write sections use `BEGIN IMMEDIATE` (`immediate`). The
OAuth tokens live apart, in a 0600 file beside the database (`secrets_path_for`, state/secrets_db.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 10_000

# A checkpointed WAL is reused from its start but keeps its size on disk; cap what it keeps, so a burst of
# writes (the rows held while the disk was full, say) does not hold that space for good.
WAL_SIZE_LIMIT = 4 * 1024 * 1024

DEFAULT_FILE = "sluice.db"


def open_connection(
    path: str | os.PathLike[str] | None = None,
    *,
    memory: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> sqlite_utils.Database:
    """A connection with the settings every sluice process must share (not migrated: see migrations.py).
    The file and its directory are created if missing."""
    if memory:
        return sqlite_utils.Database(memory=True)
    file = Path(path or DEFAULT_FILE).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(file), timeout=busy_timeout_ms / 1000, check_same_thread=False, isolation_level=None
    )
    try:
        db = sqlite_utils.Database(conn)
        db.execute(f"pragma busy_timeout = {int(busy_timeout_ms)}")
        _use_wal(conn, busy_timeout_ms / 1000)
        db.execute("pragma synchronous = normal")
        db.execute(f"pragma journal_size_limit = {WAL_SIZE_LIMIT}")
    except BaseException:
        conn.close()
        raise
    return db


def _use_wal(conn: sqlite3.Connection, wait_s: float) -> None:
    """Switch the file to WAL. On a new file another process may be switching it at the same moment, and
    SQLite answers "database is locked" at once there, without its busy handler: wait for the other, as
    `busy_timeout` would, up to `wait_s` (two proxies started together on a new file both start)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("pragma journal_mode = wal").fetchall()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A read-then-write transaction: `BEGIN IMMEDIATE` takes the write lock up front, so it waits on
    `busy_timeout` instead of failing on upgrade the way a deferred `BEGIN` does under contention."""
    conn.execute("begin immediate")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise
    conn.execute("commit")


def secrets_path_for(db_path: str | os.PathLike[str]) -> Path:
    """Where the OAuth store lives for a main database: `sluice.db` → `sluice.secrets.db`, beside it."""
    path = Path(db_path).expanduser()
    return path.with_name(f"{path.stem}.secrets.db")
