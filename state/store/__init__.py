"""The store: the one object through which sluice's parts reach the database.

`open_store(location)` opens the database the `sluice_db` option names (today a SQLite file: state/store/
sqlite.py), creating it and bringing its schema up to date (state/store/migrations.py), so a location that
cannot be opened fails there, once. The core opens it and hands it to the parts (`core.store`); the ops
process and the `sluice` command open theirs with the same function. What a part asks of it:

- `connect()`: a connection of its own, for a part that keeps one (the writer, the credential pool, the
  budget and rate ledgers, the alert log), its schema brought up to date if the file lacks a migration;
- `reading()`: a short-lived connection for one read, closed after it;
- `immediate(db)`: a read-then-write transaction on one of its connections;
- `secrets_path`: where the OAuth tokens live, apart from the tables reports read;
- `display`: the location for messages and logs, with any password in it replaced by `***`.

A part that keeps a connection reopens it when the core's store is another object than the one it opened it
from: that is what a changed `sluice_db` looks like to a part.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils
from psycopg_pool import ConnectionPool

from state.store import postgres
from state.store.migrations import CALL_COLUMNS, SANDBOX_EVENT_COLUMNS, migrate, up_to_date
from state.store.sqlite import (
    BUSY_TIMEOUT_MS,
    DEFAULT_FILE,
    immediate,
    open_connection,
    secrets_path_for,
)

__all__ = [
    "CALL_COLUMNS",
    "SANDBOX_EVENT_COLUMNS",
    "AnyStore",
    "Database",
    "PostgresStore",
    "Store",
    "connect",
    "open_store",
    "redact",
]

REDACTED = "***"


class Store:
    """The database at one location. Cheap to make (it opens nothing); `open_store` makes one and opens it.
    Safe to share between threads: each connection it gives is for one owner at a time."""

    engine = "sqlite"

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = os.fspath(location)
        self.file = Path(self.location or DEFAULT_FILE).expanduser()

    def __repr__(self) -> str:
        return f"Store({self.display!r})"

    @property
    def display(self) -> str:
        """The location as messages and logs may show it: never with a password."""
        return redact(self.location)

    @property
    def secrets_path(self) -> Path:
        """Where the OAuth tokens live: a 0600 file beside the database (state/secrets_db.py)."""
        return secrets_path_for(self.file)

    def connect(self, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite_utils.Database:
        """A new connection, for one owner, with its schema up to date. The migrations run only on a file
        that lacks some (the first connection, or the first after the file was deleted or replaced): on
        any other, one read finds it current."""
        db = open_connection(self.file, busy_timeout_ms=busy_timeout_ms)
        try:
            if not up_to_date(db):
                migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def reading(self) -> Iterator[sqlite_utils.Database]:
        """A connection for one read (or a few), closed when the block ends."""
        db = self.connect()
        try:
            yield db
        finally:
            db.close()

    def immediate(self, db: sqlite_utils.Database, lock: str | None = None) -> AbstractContextManager[None]:
        """A read-then-write transaction on a connection of this store: the file's write lock taken up
        front (one lock for the whole file, whatever `lock` names: see PostgresStore.immediate)."""
        return immediate(db.conn)

    def close(self) -> None:
        """Nothing to let go: every connection is its owner's."""


class PostgresStore:
    """A PostgreSQL database that proxies on many machines share (state/store/postgres.py). Cheap to make;
    `open_store` makes one and opens it. Short reads borrow from a small psycopg pool; a part that keeps a
    connection gets one of its own."""

    engine = "postgres"
    READING_POOL_MAX = 4

    def __init__(self, location: str) -> None:
        self.location = location
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self.display!r})"

    @property
    def display(self) -> str:
        return redact(self.location)

    def connect(self) -> postgres.PgDatabase:
        """A new connection, for one owner, with the schema up to date."""
        return postgres.open_migrated(self.location)

    @contextmanager
    def reading(self) -> Iterator[postgres.PgDatabase]:
        """A pooled connection for one read (or a few), back in the pool when the block ends."""
        with self._reading_pool().connection() as conn:
            yield postgres.PgDatabase(postgres.PgConnection(conn))

    def immediate(self, db: postgres.PgDatabase, lock: str | None = None) -> AbstractContextManager[None]:
        """A read-then-write transaction serialized, across every proxy on the database, with the others that
        name the same `lock` (with every other that names none, for None): an advisory lock."""
        return postgres.immediate(db.conn, lock)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _reading_pool(self) -> ConnectionPool[Any]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.location,
                    min_size=0,
                    max_size=self.READING_POOL_MAX,
                    kwargs=postgres.connection_settings(),
                    name="sluice-reads",
                    open=True,
                )
            return self._pool


type AnyStore = Store | PostgresStore
# A connection a part keeps: sqlite-utils' over sqlite3, or its PostgreSQL counterpart (`.conn.execute` with
# `?` parameters on both).
type Database = sqlite_utils.Database | postgres.PgDatabase


def open_store(location: str | os.PathLike[str]) -> AnyStore:
    """The store at `location` (the `sluice_db` option): a PostgreSQL URL (`postgresql://…`) or a SQLite
    file. Opened now: created if missing and migrated, so a location that cannot be opened raises here
    (sqlite3.Error, OSError, psycopg.Error) rather than at the first call."""
    text = os.fspath(location)
    store: AnyStore = PostgresStore(text) if postgres.is_postgres(text) else Store(text)
    store.connect().close()
    return store


def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    memory: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> sqlite_utils.Database:
    """A migrated connection to a SQLite file (or an in-memory database) with no store around it, for the
    tests and the benchmark; the proxy's parts take theirs from their store."""
    db = open_connection(path, memory=memory, busy_timeout_ms=busy_timeout_ms)
    migrate(db)
    return db


def redact(location: str) -> str:
    """A location with any password in it (`postgresql://user:secret@host/db`, `?password=secret`)
    replaced by `***`; a file path as it is. A URL that cannot be parsed shows its scheme only."""
    if "://" not in location:
        return location
    try:
        parts = urllib.parse.urlsplit(location)
        password = parts.password
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return location.split("://", 1)[0] + "://…"
    netloc, query = parts.netloc, parts.query
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{hostport}"
    if any(key.lower() == "password" for key, _ in pairs):
        query = urllib.parse.urlencode(
            [(key, REDACTED if key.lower() == "password" else value) for key, value in pairs], safe="*"
        )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_error(location: str, error: BaseException) -> str:
    """The text of `error`, raised opening `location`, with the location's password replaced by `***`:
    libpq's URL parser quotes the part it rejects (`invalid percent-encoded token: "s3cret%ZZ"`, an unclosed
    `[` quotes the whole URL), so an exception's text is never shown as it is."""
    text = str(error)
    for secret in sorted(_passwords(location), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _passwords(location: str) -> set[str]:
    """Every spelling of the password in `location` that a message may quote: as written and decoded, from
    the userinfo (found without a URL parser, which gives up on the URLs whose errors quote them) and from a
    `password=` parameter."""
    if "://" not in location:
        return set()
    rest = location.split("://", 1)[1]
    found: set[str] = set()
    userinfo, at, _ = rest.partition("?")[0].rpartition("@")
    if at and ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    for pair in rest.partition("?")[2].split("&"):
        key, _, value = pair.partition("=")
        if key.lower() == "password":
            found.add(value)
    found |= {urllib.parse.unquote(secret) for secret in found}
    return {secret for secret in found if secret}
