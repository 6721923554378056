"""What the credential parts (state/pool.py, state/oauth.py) need of a connection on either engine: the
errors a database raises, a read-then-write transaction named by what it guards, and whether a PostgreSQL
connection was lost (the server restarted or went away) and must be opened again."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from state.store import postgres
from state.store.sqlite import immediate

# What either engine raises when the database refuses or is away: a part that rides the fault out catches
# these and nothing wider.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)

type Connection = sqlite3.Connection | postgres.PgConnection


@contextmanager
def transaction(conn: Connection, lock: str) -> Iterator[None]:
    """A read-then-write transaction: on SQLite the file's write lock (`BEGIN IMMEDIATE`), on PostgreSQL a
    transaction-scoped advisory lock named `lock`, so only writers of the same thing wait for each other."""
    if isinstance(conn, postgres.PgConnection):
        with postgres.immediate(conn, lock):
            yield
    else:
        with immediate(conn):
            yield


def lost(conn: Connection) -> bool:
    """Whether this is a PostgreSQL connection the server dropped (a SQLite file is never lost this way)."""
    return isinstance(conn, postgres.PgConnection) and conn.raw.closed


def described(error: BaseException) -> str:
    """A database error for a log line: for PostgreSQL its primary message only, never the DETAIL, which
    can quote the row a statement failed on ("Failing row contains (…)": tokens, for the OAuth store)."""
    if isinstance(error, psycopg.Error):
        return error.diag.message_primary or type(error).__name__
    return str(error)
