"""`sluice migrate`: move a SQLite sluice database's history into a PostgreSQL one.

Every table the proxies write is copied, batch by batch in the source's row order, each batch committed on
its own and added with `ON CONFLICT DO NOTHING` (state/store/postgres.py `copy_new_rows`): a run that stops
half way is completed by running it again, and a run over rows already moved adds nothing. The OAuth tokens
are never moved: they live apart from this database on SQLite (its 0600 secrets file), and a fleet's proxies
log in again on PostgreSQL. A value PostgreSQL cannot hold (text with a NUL, an integer over 64 bits) is
written as the writer writes it (state/writer.py `storable_value`); a row PostgreSQL refuses all the same is
counted and named, never silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlite_utils

from state.store.postgres import PgDatabase, copy_new_rows
from state.writer import storable_value

log = logging.getLogger("sluice")

# The tables a proxy writes, in an order that copies what others refer to first. `proxy_instances` is left
# out: it says which proxies are alive now, which a moved history does not.
TABLES = (
    "calls",
    "rate_limits",
    "credentials",
    "credential_events",
    "credential_affinity",
    "budgets",
    "team_budgets",
    "budget_holds",
    "rate_admissions",
    "alerts",
    "sandbox_events",
)
BATCH_ROWS = 5_000


@dataclass
class Moved:
    """What one table's move did: rows read from the source, rows added to the target (the rest were there
    already), rows the target refused."""

    table: str
    read: int = 0
    added: int = 0
    refused: list[str] = field(default_factory=list)


def move_history(
    source: sqlite_utils.Database,
    target: PgDatabase,
    *,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[Moved], None] = lambda moved: None,
) -> list[Moved]:
    """Copy every table of `TABLES` from `source` into `target` (both migrated to this code's schema)."""
    results = []
    for table in TABLES:
        moved = Moved(table)
        columns = _shared_columns(source, target, table)
        if columns:
            names = ", ".join(f'"{name}"' for name in columns)
            cursor = source.conn.execute(f"select {names} from {table} order by rowid")
            while batch := cursor.fetchmany(batch_rows):
                moved.read += len(batch)
                moved.added += _add(
                    target, table, columns, [tuple(map(storable_value, row)) for row in batch], moved
                )
                progress(moved)
        if table == "credential_events":
            _follow_identity(target)
        results.append(moved)
    return results


def _shared_columns(source: sqlite_utils.Database, target: PgDatabase, table: str) -> list[str]:
    """The columns both databases have for `table`, in the source's order."""
    listed = (
        "select column_name from information_schema.columns where table_schema = 'public' and table_name = %s"
    )
    theirs = {row[0] for row in target.conn.raw.execute(listed, (table,))}
    return [row[1] for row in source.conn.execute(f"pragma table_info({table})") if row[1] in theirs]


def _add(
    target: PgDatabase, table: str, columns: list[str], rows: list[tuple[Any, ...]], moved: Moved
) -> int:
    """Add a batch in one transaction; the count it added. A batch PostgreSQL refuses goes row by row, so
    that only the rows it cannot take are left (and named)."""
    conn = target.conn
    try:
        conn.execute("begin")
        added = copy_new_rows(conn, table, columns, rows)
        conn.execute("commit")
        return added
    except psycopg.DataError:
        conn.raw.execute("rollback")
    added = 0
    for row in rows:
        try:
            conn.execute("begin")
            added += copy_new_rows(conn, table, columns, [row])
            conn.execute("commit")
        except psycopg.DataError as e:
            conn.raw.execute("rollback")
            moved.refused.append(f"{table} {columns[0]}={row[0]!r}: {e}")
    return added


def _follow_identity(target: PgDatabase) -> None:
    """After `credential_events` rows came with their own ids, the proxies' next ids follow the highest."""
    target.conn.raw.execute(
        "select setval(pg_get_serial_sequence('credential_events', 'id'),"
        " greatest((select max(id) from credential_events), 1))"
    )
