"""The PostgreSQL engine: one database that proxies on many machines share (`sluice_db=postgresql://…`).

Connections are psycopg 3's, each in autocommit: a part marks its transactions itself, as it does on SQLite
(`begin` … `commit`). Where a SQLite part takes the file's write lock up front (`BEGIN IMMEDIATE`), here a
read-then-write section takes a transaction-scoped advisory lock (`pg_advisory_xact_lock`), named by what it
guards (`immediate(db, lock="budget:alice")`), or one for the whole database when it names nothing: the
same serialization, made of PostgreSQL's own locking, and released by the commit or by the connection
dropping.

SQL is written once, with SQLite's `?` parameters; `translate` gives psycopg's spelling (`%s`), turns
`BEGIN IMMEDIATE` into `BEGIN` and `INSERT OR IGNORE` into `INSERT … ON CONFLICT DO NOTHING`. Anything
else SQLite-only (its date functions, `INSERT OR REPLACE`) is written per engine by the part that needs it.

The location is a libpq connection URL; libpq's environment variables fill in what it leaves out
(`PGPASSWORD`, `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, …). Messages and logs show it through `redact`:
never a password.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

SCHEMES = ("postgresql://", "postgres://")
# How long a proxy waits for the server to answer a connection attempt: a fleet's database that is away is
# a fault to ride out (the writer holds rows meanwhile), not a reason to hang a part.
CONNECT_TIMEOUT_S = 5
# Any single statement is cancelled after this long: a lock held by a proxy that vanished mid-transaction is
# released by the server when its connection drops, but a statement must not wait forever behind one.
STATEMENT_TIMEOUT_MS = 30_000
# Unacknowledged data on a connection for this long means the server is gone (libpq's tcp_user_timeout).
TCP_USER_TIMEOUT_MS = 15_000

# Advisory locks are 64-bit keys in one namespace per database: sluice's are `hashtextextended(name, seed)`.
_LOCK_SEED = 0x51_1C_E0
_WHOLE_DATABASE = "sluice"
_MIGRATIONS_LOCK = "sluice:migrations"


def is_postgres(location: str) -> bool:
    return location.lower().startswith(SCHEMES)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """`sql` as written for sqlite3 (`?` parameters), as psycopg takes it. Raises ValueError for what has
    no one-to-one spelling here (`INSERT OR REPLACE` needs the conflict's columns: write an upsert)."""
    text = sql.replace("%", "%%").replace("?", "%s")
    head = text.lstrip().lower()
    if head.startswith("begin immediate"):
        return "begin"
    if head.startswith("insert or replace"):
        raise ValueError("INSERT OR REPLACE has no PostgreSQL spelling: write an INSERT … ON CONFLICT")
    if head.startswith("insert or ignore"):
        text = re.sub(r"(?i)insert\s+or\s+ignore", "insert", text, count=1).rstrip().rstrip(";")
        text += " on conflict do nothing"
    return text


class PgConnection:
    """A psycopg connection in autocommit that takes sqlite3-style SQL: the few methods sluice's parts call
    on a sqlite3 connection (`execute`, `executemany`, `in_transaction`, `close`)."""

    dialect = "postgres"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(translate(sql), parameters or None)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(translate(sql), rows)
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


class PgDatabase:
    """What a part holds for a connection of its own, shaped as the `sqlite_utils.Database` it holds on
    SQLite where parts use one: `.conn`, `.execute`, `.query`, `.close`."""

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(sql, parameters)

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        cursor = self.conn.execute(sql, parameters)
        names = [column.name for column in cursor.description or ()]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    def close(self) -> None:
        self.conn.close()


def connection_settings() -> dict[str, Any]:
    """What every sluice connection is opened with, besides the location."""
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "sluice",
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c timezone=UTC",
        # A server that vanished without a word (a network partition, not a refused connection) is noticed
        # within seconds, not after the system's TCP retries: no statement waits on a dead peer for minutes.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }


def open_connection(location: str) -> PgDatabase:
    """A new autocommit connection. Fails with psycopg.OperationalError when the server cannot be reached
    or refuses the login; its message names the host, never the password."""
    return PgDatabase(PgConnection(psycopg.connect(location, **connection_settings())))


def copy_new_rows(conn: PgConnection, table: str, columns: list[str], rows: Sequence[Sequence[Any]]) -> int:
    """Add `rows` to `table`, leaving out those whose key it holds already, inside the caller's transaction:
    `COPY` into a temporary table shaped like it (emptied at each commit), then one `INSERT … SELECT … ON
    CONFLICT DO NOTHING`. COPY streams the batch in one round trip; an `INSERT` of many `VALUES` groups is
    planned row by row (measured: ~118,000 rows a second against ~7,700 on this machine). Returns how many
    rows were added."""
    if not rows:
        return 0
    staging = f"_sluice_new_{table}"
    names = ", ".join(columns)
    conn.raw.execute(
        f"create temporary table if not exists {staging} (like {table} including defaults)"
        " on commit delete rows"
    )
    with conn.raw.cursor() as cursor, cursor.copy(f"copy {staging} ({names}) from stdin") as copy:
        for row in rows:
            copy.write_row(row)
    added = conn.raw.execute(
        f"insert into {table} ({names}) select {names} from {staging} on conflict do nothing"
    )
    return added.rowcount


@contextmanager
def immediate(conn: PgConnection, lock: str | Sequence[str] | None = None) -> Iterator[None]:
    """A read-then-write transaction serialized with every other one that names the same `lock` (every other
    one that names none, for None) across all proxies on this database: a transaction-scoped advisory lock,
    taken before anything is read. Several names (a member's budget and its team's) are each locked, in
    sorted order, so two transactions that share some of them never wait on each other in a cycle."""
    names = (
        [lock or _WHOLE_DATABASE] if isinstance(lock, str) else sorted(set(lock or ())) or [_WHOLE_DATABASE]
    )
    conn.execute("begin")
    try:
        for name in names:
            conn.raw.execute("select pg_advisory_xact_lock(hashtextextended(%s, %s))", (name, _LOCK_SEED))
        yield
    except BaseException:
        if conn.in_transaction:
            conn.raw.execute("rollback")
        raise
    conn.execute("commit")


# --- the schema ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the PostgreSQL schema: its number, its name, its statements (run in one transaction)."""

    number: int
    name: str
    statements: tuple[str, ...]


# The error definition of rules/call_outcome.py (`ERROR_SQL`), written out as views are frozen with it.
_IS_ERROR = "(coalesce(error, '') != '' or status is null or status >= 400)"

# The schema as SQLite's migrations 1 to 11 leave it, in PostgreSQL's types: text where SQLite keeps text
# (timestamps stay ISO 8601 text, so reports read them alike on both engines), bigint for integers, double
# precision for reals.
_BASELINE = (
    """
    create table calls (
        id text primary key, started_at text not null, client text, host text not null, method text,
        path text not null, provider text, api text, model text, stream bigint not null default 0,
        status bigint, error text, request_id text, response_id text, stop_reason text,
        input_tokens bigint, cache_read_tokens bigint, cache_write_5m_tokens bigint,
        cache_write_1h_tokens bigint, output_tokens bigint, reasoning_tokens bigint,
        web_search_requests bigint, counted_tokens bigint, service_tier text, speed text,
        cost_usd double precision, cost_note text, duration_ms double precision, ttft_ms double precision,
        credential text, request_bytes bigint, response_bytes bigint, rules_applied text, rate_limits text,
        session_id text, cache_status text, cache_note text, region text
    )
    """,
    "create index idx_calls_started_at on calls (started_at)",
    "create index idx_calls_client_started_at on calls (client, started_at)",
    "create index idx_calls_model_started_at on calls (model, started_at)",
    """
    create table rate_limits (
        host text not null, credential text not null, header text not null, value text not null,
        observed_at text not null, call_id text, primary key (host, credential, header)
    )
    """,
    """
    create table credentials (
        host text not null, fingerprint text not null, label text not null, kind text not null default 'key',
        position bigint, state text not null default 'active', reason text, cooling_until double precision,
        changed_at double precision, configured_at double precision, quota_status text,
        headroom double precision, headroom_at double precision, primary key (host, fingerprint)
    )
    """,
    """
    create table credential_events (
        id bigint generated by default as identity primary key, at double precision not null,
        host text not null, fingerprint text, label text, event text not null, detail text,
        until double precision
    )
    """,
    "create index idx_credential_events_at on credential_events (at)",
    """
    create table credential_affinity (
        host text not null, conversation text not null, fingerprint text not null,
        used_at double precision not null, primary key (host, conversation)
    )
    """,
    "create index idx_credential_affinity_used_at on credential_affinity (used_at)",
    """
    create table budgets (
        client text primary key, usd double precision not null, period text not null,
        updated_at double precision
    )
    """,
    """
    create table budget_holds (
        id text primary key, client text not null, period_key text not null,
        amount_usd double precision not null, estimate_usd double precision, state text not null,
        created_at double precision not null, settled_at double precision, team text, team_period_key text
    )
    """,
    "create index idx_budget_holds_client_period_key_state on budget_holds (client, period_key, state)",
    "create index idx_budget_holds_state_created_at on budget_holds (state, created_at)",
    "create index idx_budget_holds_team_team_period_key_state on budget_holds (team, team_period_key, state)",
    """
    create table team_budgets (
        team text primary key, usd double precision not null, period text not null, members text not null,
        updated_at double precision
    )
    """,
    """
    create table rate_admissions (
        id text primary key, client text not null, team text, owner text not null,
        admitted_at double precision not null, input_tokens bigint, output_tokens bigint, state text not null,
        ended_at double precision
    )
    """,
    "create index idx_rate_admissions_client_admitted_at on rate_admissions (client, admitted_at)",
    "create index idx_rate_admissions_state_owner on rate_admissions (state, owner)",
    "create index idx_rate_admissions_team_admitted_at on rate_admissions (team, admitted_at)",
    "create table proxy_instances (id text primary key, seen_at double precision not null)",
    """
    create table alerts (
        dedup text not null, webhook text not null, at double precision not null, event text not null,
        subject text not null, message text not null, state text not null default 'pending',
        attempts bigint not null default 0, error text, delivered_at double precision,
        primary key (dedup, webhook)
    )
    """,
    """
    create table sandbox_events (
        id text primary key, at text not null, kind text not null, host text, port bigint,
        client_address text, reason text not null
    )
    """,
    "create index idx_sandbox_events_at on sandbox_events (at)",
    """
    create view cache_misses as
        select id, started_at, client, session_id, model, credential, cache_note,
               input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_usd
        from calls
        where cache_status = 'miss'
        order by started_at desc
    """,
    f"""
    create view daily_usage as
        select substr(started_at, 1, 10) as day, coalesce(client, '') as client,
               coalesce(model, '') as model,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0)) as cache_write_5m_tokens,
               sum(coalesce(cache_write_1h_tokens, 0)) as cache_write_1h_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               sum(coalesce(reasoning_tokens, 0)) as reasoning_tokens,
               round(sum(coalesce(cost_usd, 0))::numeric, 6)::double precision as cost_usd,
               sum(case when cost_usd is null and api != 'count_tokens' then 1 else 0 end) as unpriced_calls,
               sum(case when {_IS_ERROR} then 1 else 0 end) as errors
        from calls
        group by 1, 2, 3
    """,
    f"""
    create view errors as
        select id, started_at, client, host, path, model, status, error, request_id, rules_applied
        from calls
        where {_IS_ERROR}
        order by started_at desc
    """,
    """
    create view latest_rate_limits as
        select host, credential, header, value, observed_at, call_id
        from rate_limits
        order by host, credential, header
    """,
    f"""
    create view model_usage as
        select coalesce(provider, '') as provider, coalesce(model, '') as model,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0) + coalesce(cache_write_1h_tokens, 0))
                   as cache_write_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               round(sum(coalesce(cost_usd, 0))::numeric, 6)::double precision as cost_usd,
               round((1.0 * sum(coalesce(cache_read_tokens, 0)) / nullif(sum(coalesce(input_tokens, 0)
                   + coalesce(cache_read_tokens, 0) + coalesce(cache_write_5m_tokens, 0)
                   + coalesce(cache_write_1h_tokens, 0)), 0))::numeric, 4)::double precision
                   as cache_read_share,
               round(avg(ttft_ms)::numeric, 1)::double precision as avg_ttft_ms,
               round(avg(duration_ms)::numeric, 1)::double precision as avg_duration_ms,
               sum(case when {_IS_ERROR} then 1 else 0 end) as errors,
               min(started_at) as first_call_at, max(started_at) as last_call_at
        from calls
        where coalesce(api, '') != 'count_tokens'
        group by 1, 2
        order by cost_usd desc
    """,
    f"""
    create view sessions as
        select session_id, min(started_at) as first_call_at, max(started_at) as last_call_at,
               string_agg(distinct client, ',') as clients,
               string_agg(distinct model, ',') as models,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0) + coalesce(cache_write_1h_tokens, 0))
                   as cache_write_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               round(sum(coalesce(cost_usd, 0))::numeric, 6)::double precision as cost_usd,
               sum(case when cache_status = 'miss' then 1 else 0 end) as cache_misses,
               sum(case when {_IS_ERROR} then 1 else 0 end) as errors
        from calls
        where session_id is not null
        group by session_id
        order by first_call_at desc
    """,
)

# The OAuth tokens, in a schema of their own that reports and dashboards are never granted (README, "OAuth
# tokens on PostgreSQL": the grants). The same two tables as the SQLite secrets file after its migration 2
# (state/secrets_db.py); state/oauth.py is their only reader and writer.
SECRETS_SCHEMA = "sluice_secrets"
_SECRETS = (
    f"create schema if not exists {SECRETS_SCHEMA}",
    f"revoke all on schema {SECRETS_SCHEMA} from public",
    f"""
    create table {SECRETS_SCHEMA}.oauth_tokens (
        key text primary key, access_token text not null, refresh_token text, expires_at double precision,
        version bigint not null, lease_owner text, lease_until double precision,
        seed_fingerprint text not null, seeded_at double precision not null, refreshed_at double precision,
        failed_reason text, failed_at double precision, rejected_fingerprint text
    )
    """,
    f"""
    create table {SECRETS_SCHEMA}.oauth_seen (
        key text not null, fingerprint text not null, seen_at double precision not null,
        primary key (key, fingerprint)
    )
    """,
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline_as_sqlite_11", _BASELINE),
    Migration(2, "oauth_tokens_in_their_own_schema", _SECRETS),
)


def migrate(db: PgDatabase, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Apply the migrations this database has not seen, each once, in order, in one transaction under an
    advisory lock: whichever proxy starts first applies them (its table of applied migrations included);
    the others wait on the lock and find them applied."""
    conn = db.conn
    with immediate(conn, _MIGRATIONS_LOCK):
        conn.raw.execute(
            "create table if not exists _sluice_migrations"
            " (id integer primary key, name text not null, applied_at timestamptz not null default now())"
        )
        applied = {row[0] for row in conn.raw.execute("select id from _sluice_migrations")}
        for migration in migrations:
            if migration.number in applied:
                continue
            for statement in migration.statements:
                conn.raw.execute(statement)  # DDL: written for PostgreSQL, nothing to translate
            record = "insert into _sluice_migrations (id, name) values (%s, %s)"
            conn.raw.execute(record, (migration.number, migration.name))


class NotSluice(Exception):
    """The database has no sluice tables, and was asked to stay as it is."""


def open_migrated(location: str, *, only_sluice: bool = False) -> PgDatabase:
    """A new connection with the schema up to date. With `only_sluice`, a database without sluice's tables
    raises NotSluice and is left untouched (a read command must not add them to some other database)."""
    db = open_connection(location)
    try:
        if only_sluice:
            found = db.conn.raw.execute("select to_regclass('public._sluice_migrations')").fetchone()
            if found is None or found[0] is None:
                raise NotSluice(location)
        if not up_to_date(db):
            migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def up_to_date(db: PgDatabase) -> bool:
    """Whether every migration is recorded as applied: one read."""
    try:
        row = db.conn.raw.execute("select max(id) from _sluice_migrations").fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return row is not None and row[0] is not None and row[0] >= MIGRATIONS[-1].number
