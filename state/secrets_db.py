"""Where the OAuth tokens live, apart from the tables reports and datasette show.

On SQLite, the secrets file (`open_secrets_db`). On PostgreSQL, the schema `sluice_secrets` of the shared
database (`open_secrets_pg`; created by its migration 2, state/store/postgres.py), which the role reports and
dashboards read with is granted nothing on (README, "OAuth tokens on PostgreSQL": the grants).

The file: `<db stem>.secrets.db` beside the main database, created with mode 0600 whatever the umask (its
`-wal` and `-shm` files take the same mode), migrated in one `BEGIN IMMEDIATE` transaction so that several
processes opening it at once agree on its schema. state/oauth.py is the only reader and writer of its tables.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg

from state.store import postgres
from state.store.sqlite import BUSY_TIMEOUT_MS, immediate


def _secrets_1_tokens(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table oauth_tokens (
            key text primary key,          -- the upstream host
            access_token text not null,
            refresh_token text,            -- null for a long-lived token
            expires_at real,               -- epoch seconds; null when unknown (never refreshed ahead)
            version integer not null,      -- +1 on every store: the compare-and-swap token
            lease_owner text,              -- process holding the refresh lease
            lease_until real,              -- epoch seconds the lease lapses at
            seed_fingerprint text not null,
            seeded_at real not null,
            refreshed_at real,
            failed_reason text,            -- set when the token endpoint refused for good
            failed_at real
        )
        """
    )
    # Fingerprints of every refresh (or long-lived access) token the store was seeded with or obtained:
    # the seeding rule in the docstring of state/oauth.py.
    conn.execute(
        """
        create table oauth_seen (
            key text not null, fingerprint text not null, seen_at real not null,
            primary key (key, fingerprint)
        )
        """
    )


def _secrets_2_rejections(conn: sqlite3.Connection) -> None:
    # The fingerprint of the access token the provider last refused (401) while the token that replaced it
    # has not yet been accepted: when the replacement is refused too, the credential cannot heal.
    conn.execute("alter table oauth_tokens add column rejected_fingerprint text")


SECRETS_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_secrets_1_tokens, _secrets_2_rejections]


def open_secrets_db(
    path: str | os.PathLike[str], *, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """Open (creating with mode 0600) and migrate the secrets file.

    The file is created by `os.open(..., 0o600)` before SQLite touches it, whatever the umask, and a file
    that already exists with group or other bits loses them. SQLite gives its `-wal` and `-shm` files the
    database file's mode.
    """
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    for candidate in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
        if candidate is file:
            fd = os.open(candidate, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        elif candidate.exists() and candidate.stat().st_mode & 0o077:
            candidate.chmod(0o600)
    conn = sqlite3.connect(
        str(file), timeout=busy_timeout_ms / 1000, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"pragma busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("pragma journal_mode = wal")
    conn.execute("pragma synchronous = normal")
    version = conn.execute("pragma user_version").fetchone()[0]
    if version < len(SECRETS_MIGRATIONS):
        with immediate(conn):
            version = conn.execute("pragma user_version").fetchone()[0]  # another process may have won
            for migration in SECRETS_MIGRATIONS[version:]:
                migration(conn)
            conn.execute(f"pragma user_version = {len(SECRETS_MIGRATIONS)}")
    return conn


def open_secrets_pg(location: str) -> postgres.PgConnection:
    """A connection to the PostgreSQL database at `location` whose unqualified tables are those of the
    secrets schema (`search_path`), so the OAuth store's SQL is the same on both engines. The schema is
    the store's migrations' to create: open the store first (`open_store`)."""
    settings = postgres.connection_settings()
    settings["options"] = f"{settings['options']} -c search_path={postgres.SECRETS_SCHEMA}"
    return postgres.PgConnection(psycopg.connect(location, **settings))
