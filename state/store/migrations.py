"""The sluice schema: the columns the writer fills, and the migrations that build every table and view.

Migrations are append-only: each keeps its number for good (a database records the numbers applied to it
in `_sluice_migrations`) and its name, and once released its body is never edited, since databases it
already ran on will never run it again. A change is a new migration at the end. A migration builds from
literal column lists, never from the live ones below (`CALL_COLUMNS` grows; what migration 1 created does
not). tests/state/store/test_migrations.py holds a digest of each released migration's source.

The bodies are SQLite's (sqlite-utils); `migrate` applies them once each, in order, under `BEGIN IMMEDIATE`,
so several processes opening one file at once agree on its schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from state.store.sqlite import immediate

# Columns of `calls`, in order. Token columns mean the same for every provider: `input_tokens` is uncached
# input only (OpenAI's cached tokens are moved out of its prompt/input count) and `output_tokens` includes
# reasoning.
CALL_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,
    "client": str,
    "host": str,
    "method": str,
    "path": str,
    "provider": str,
    "api": str,
    "model": str,
    "stream": int,
    "status": int,
    "error": str,
    "request_id": str,
    "response_id": str,
    "stop_reason": str,
    "input_tokens": int,
    "cache_read_tokens": int,
    "cache_write_5m_tokens": int,
    "cache_write_1h_tokens": int,
    "output_tokens": int,
    "reasoning_tokens": int,
    "web_search_requests": int,
    "counted_tokens": int,
    "service_tier": str,
    "speed": str,
    "cost_usd": float,
    "cost_note": str,
    "duration_ms": float,
    "ttft_ms": float,
    "credential": str,
    "request_bytes": int,
    "response_bytes": int,
    "rules_applied": str,
    "rate_limits": str,
    "session_id": str,
    # Prompt-cache health (rules/cache_health.py): hit | write | miss | none, NULL when not judged; for a
    # miss, the likely cause.
    "cache_status": str,
    "cache_note": str,
    # The cloud region a regional host names (Bedrock's, Vertex AI's); NULL for any other host.
    "region": str,
}


# Columns of `sandbox_events`: what a sandboxed command tried that its egress policy refused
# (addons/sandbox.py). `kind` is `dns` (a name looked up), `connection` (a connection sluice would not
# open) or `request` (an HTTP request answered 403); `host` is the name it asked for, or the address when
# it named none.
SANDBOX_EVENT_COLUMNS: dict[str, type] = {
    "id": str,
    "at": str,
    "kind": str,
    "host": str,
    "port": int,
    "client_address": str,
    "reason": str,
}


def _migration_1_calls_and_rate_limits(db: sqlite_utils.Database) -> None:
    # The columns `calls` had when this migration was written; later ones are added by their own migration.
    db["calls"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "started_at": str,
            "client": str,
            "host": str,
            "method": str,
            "path": str,
            "provider": str,
            "api": str,
            "model": str,
            "stream": int,
            "status": int,
            "error": str,
            "request_id": str,
            "response_id": str,
            "stop_reason": str,
            "input_tokens": int,
            "cache_read_tokens": int,
            "cache_write_5m_tokens": int,
            "cache_write_1h_tokens": int,
            "output_tokens": int,
            "reasoning_tokens": int,
            "web_search_requests": int,
            "counted_tokens": int,
            "service_tier": str,
            "speed": str,
            "cost_usd": float,
            "cost_note": str,
            "duration_ms": float,
            "ttft_ms": float,
            "credential": str,
            "request_bytes": int,
            "response_bytes": int,
            "rules_applied": str,
            "rate_limits": str,
            "session_id": str,
        },
        pk="id",
        not_null={"id", "started_at", "host", "path", "stream"},
        defaults={"stream": 0},
    )
    db["calls"].create_index(["started_at"])  # type: ignore[union-attr]
    db["calls"].create_index(["client", "started_at"])  # type: ignore[union-attr]
    db["calls"].create_index(["model", "started_at"])  # type: ignore[union-attr]
    # One row per (upstream host, credential, header): the latest value seen, with the call it came from.
    db["rate_limits"].create(  # type: ignore[union-attr]
        {
            "host": str,
            "credential": str,
            "header": str,
            "value": str,
            "observed_at": str,
            "call_id": str,
        },
        pk=("host", "credential", "header"),
        not_null={"host", "credential", "header", "value", "observed_at"},
    )


def _migration_2_views(db: sqlite_utils.Database) -> None:
    db.create_view(
        "daily_usage",
        """
        select date(started_at) as day, coalesce(client, '') as client, coalesce(model, '') as model,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0)) as cache_write_5m_tokens,
               sum(coalesce(cache_write_1h_tokens, 0)) as cache_write_1h_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               sum(coalesce(reasoning_tokens, 0)) as reasoning_tokens,
               round(sum(coalesce(cost_usd, 0)), 6) as cost_usd,
               sum(case when cost_usd is null and api != 'count_tokens' then 1 else 0 end) as unpriced_calls,
               sum(case when error is not null then 1 else 0 end) as errors
        from calls
        group by 1, 2, 3
        """,
        replace=True,
    )
    db.create_view(
        "latest_rate_limits",
        """
        select host, credential, header, value, observed_at, call_id
        from rate_limits
        order by host, credential, header
        """,
        replace=True,
    )


def _migration_3_credentials(db: sqlite_utils.Database) -> None:
    # One row per upstream credential (state/pool.py). Never the secret: `fingerprint` is
    # `sha256:` + 16 hex digits of it, `label` the config reference (`keys[0] env:ANTHROPIC_KEY_1`).
    # `state` is active | cooling | disabled; times are epoch seconds; `position` is the order in the
    # config, null once the config no longer lists the credential.
    db["credentials"].create(  # type: ignore[union-attr]
        {
            "host": str,
            "fingerprint": str,
            "label": str,
            "kind": str,
            "position": int,
            "state": str,
            "reason": str,
            "cooling_until": float,
            "changed_at": float,
            "configured_at": float,
        },
        pk=("host", "fingerprint"),
        not_null={"host", "fingerprint", "label", "kind", "state"},
        defaults={"kind": "key", "state": "active"},
    )


def _migration_4_budgets(db: sqlite_utils.Database) -> None:
    # The configured budgets, so `sluice clients` can show limits without the config file.
    db["budgets"].create(  # type: ignore[union-attr]
        {"client": str, "usd": float, "period": str, "updated_at": float},
        pk="client",
        not_null={"client", "usd", "period"},
    )
    # One row per admitted call of a budgeted client: held (estimate) until settled (actual cost),
    # refunded (failed before usage) or expired (left behind by a crashed process).
    db["budget_holds"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "client": str,
            "period_key": str,
            "amount_usd": float,
            "estimate_usd": float,
            "state": str,
            "created_at": float,
            "settled_at": float,
        },
        pk="id",
        not_null={"id", "client", "period_key", "amount_usd", "state", "created_at"},
    )
    db["budget_holds"].create_index(["client", "period_key", "state"])  # type: ignore[union-attr]
    db["budget_holds"].create_index(["state", "created_at"])  # type: ignore[union-attr]


def _migration_5_cache_health_and_views(db: sqlite_utils.Database) -> None:
    # Added here. A database whose migration 1 ran while it still built `calls` from the live column list
    # has them already.
    calls = db["calls"]
    for column in ("cache_status", "cache_note"):
        if column not in calls.columns_dict:
            calls.add_column(column, str)  # type: ignore[union-attr]
    db.create_view(
        "sessions",
        """
        select session_id, min(started_at) as first_call_at, max(started_at) as last_call_at,
               group_concat(distinct client) as clients,
               group_concat(distinct model) as models,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0) + coalesce(cache_write_1h_tokens, 0))
                   as cache_write_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               round(sum(coalesce(cost_usd, 0)), 6) as cost_usd,
               sum(case when cache_status = 'miss' then 1 else 0 end) as cache_misses,
               sum(case when coalesce(error, '') != '' or coalesce(status, 0) >= 400 then 1 else 0 end)
                   as errors
        from calls
        where session_id is not null
        group by session_id
        order by first_call_at desc
        """,
        replace=True,
    )
    db.create_view(
        "model_usage",
        """
        select coalesce(provider, '') as provider, coalesce(model, '') as model,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0) + coalesce(cache_write_1h_tokens, 0))
                   as cache_write_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               round(sum(coalesce(cost_usd, 0)), 6) as cost_usd,
               round(1.0 * sum(coalesce(cache_read_tokens, 0)) / nullif(sum(coalesce(input_tokens, 0)
                   + coalesce(cache_read_tokens, 0) + coalesce(cache_write_5m_tokens, 0)
                   + coalesce(cache_write_1h_tokens, 0)), 0), 4) as cache_read_share,
               round(avg(ttft_ms), 1) as avg_ttft_ms,
               round(avg(duration_ms), 1) as avg_duration_ms,
               sum(case when coalesce(error, '') != '' or coalesce(status, 0) >= 400 then 1 else 0 end)
                   as errors,
               min(started_at) as first_call_at, max(started_at) as last_call_at
        from calls
        where coalesce(api, '') != 'count_tokens'
        group by 1, 2
        order by cost_usd desc
        """,
        replace=True,
    )
    db.create_view(
        "cache_misses",
        """
        select id, started_at, client, session_id, model, credential, cache_note,
               input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_usd
        from calls
        where cache_status = 'miss'
        order by started_at desc
        """,
        replace=True,
    )
    db.create_view(
        "errors",
        """
        select id, started_at, client, host, path, model, status, error, request_id, rules_applied
        from calls
        where coalesce(error, '') != '' or coalesce(status, 0) >= 400
        order by started_at desc
        """,
        replace=True,
    )


def _migration_6_credential_history_and_routing(db: sqlite_utils.Database) -> None:
    # The pool's history (state/pool.py): one row per change a person may want to know of later:
    # refreshed, rotated, token_rejected, cooled, window_exhausted, disabled, recovered, reset, quota,
    # conversation_moved, overloaded, healed. `fingerprint` is null for provider-wide events. Never a secret:
    # `detail` is the provider's words, scrubbed of anything token-shaped.
    db["credential_events"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "at": float,
            "host": str,
            "fingerprint": str,
            "label": str,
            "event": str,
            "detail": str,
            "until": float,
        },
        pk="id",
        not_null={"at", "host", "event"},
    )
    db["credential_events"].create_index(["at"])  # type: ignore[union-attr]
    # What the provider last said of each credential's limits: its subscription status (allowed,
    # allowed_warning, rejected) and its headroom (0..1, the tightest limit left), shared between processes so
    # every proxy starts new conversations on the key with the most room.
    credentials = db["credentials"]
    for column, kind in (("quota_status", str), ("headroom", float), ("headroom_at", float)):
        if column not in credentials.columns_dict:
            credentials.add_column(column, kind)  # type: ignore[union-attr]
    # Which credential each conversation is on (its prompt cache lives there): `conversation` is a digest
    # (Claude Code's session id, else the client and first message), never prompt text.
    db["credential_affinity"].create(  # type: ignore[union-attr]
        {"host": str, "conversation": str, "fingerprint": str, "used_at": float},
        pk=("host", "conversation"),
        not_null={"host", "conversation", "fingerprint", "used_at"},
    )
    db["credential_affinity"].create_index(["used_at"])  # type: ignore[union-attr]


def _migration_7_alerts(db: sqlite_utils.Database) -> None:
    # One row per alert crossing per webhook (ops/alerts.py): `dedup` names the crossing, so two processes
    # sharing the database never deliver the same one twice; `state` is pending, delivered or failed.
    db.execute(
        """
        create table alerts (
            dedup text not null,
            webhook text not null,
            at real not null,
            event text not null,
            subject text not null,
            message text not null,
            state text not null default 'pending',
            attempts integer not null default 0,
            error text,
            delivered_at real,
            primary key (dedup, webhook)
        )
        """
    )


def _migration_8_sandbox_events(db: sqlite_utils.Database) -> None:
    db["sandbox_events"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "at": str,
            "kind": str,
            "host": str,
            "port": int,
            "client_address": str,
            "reason": str,
        },
        pk="id",
        not_null={"id", "at", "kind", "reason"},
    )
    db["sandbox_events"].create_index(["at"])  # type: ignore[union-attr]


def _migration_9_region(db: sqlite_utils.Database) -> None:
    # As in migration 5: added here, unless migration 1 made it (built from the live column list then).
    if "region" not in db["calls"].columns_dict:
        db["calls"].add_column("region", str)  # type: ignore[union-attr]


def _migration_10_teams_and_rates(db: sqlite_utils.Database) -> None:
    # A hold names the team whose budget it counts against, with that budget's period.
    holds = db["budget_holds"]
    for column in ("team", "team_period_key"):
        if column not in holds.columns_dict:
            holds.add_column(column, str)  # type: ignore[union-attr]
    holds.create_index(["team", "team_period_key", "state"], if_not_exists=True)  # type: ignore[union-attr]
    # The configured team budgets, so `sluice teams` can show them without the config file.
    db["team_budgets"].create(  # type: ignore[union-attr]
        {"team": str, "usd": float, "period": str, "members": str, "updated_at": float},
        pk="team",
        not_null={"team", "usd", "period", "members"},
    )
    # One row per admitted call of a rate-limited client (state/rates.py), and the proxies holding them open.
    db["rate_admissions"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "client": str,
            "team": str,
            "owner": str,
            "admitted_at": float,
            "input_tokens": int,
            "output_tokens": int,
            "state": str,
            "ended_at": float,
        },
        pk="id",
        not_null={"id", "client", "owner", "admitted_at", "state"},
    )
    db["rate_admissions"].create_index(["client", "admitted_at"])  # type: ignore[union-attr]
    db["rate_admissions"].create_index(["team", "admitted_at"])  # type: ignore[union-attr]
    db["rate_admissions"].create_index(["state", "owner"])  # type: ignore[union-attr]
    db["proxy_instances"].create(  # type: ignore[union-attr]
        {"id": str, "seen_at": float}, pk="id", not_null={"id", "seen_at"}
    )


def _migration_11_one_definition_of_an_error(db: sqlite_utils.Database) -> None:
    # The views counted errors three ways (`daily_usage`: an error recorded; the others: an error recorded or
    # a status >= 400; neither a call that never got a status). One now, rules/call_outcome.py's ERROR_SQL:
    # an error recorded, a status of 400 or more, or none at all. Each view as migrations 2 and 5 made it,
    # but for that test.
    db.create_view(
        "daily_usage",
        """
        select date(started_at) as day, coalesce(client, '') as client, coalesce(model, '') as model,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0)) as cache_write_5m_tokens,
               sum(coalesce(cache_write_1h_tokens, 0)) as cache_write_1h_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               sum(coalesce(reasoning_tokens, 0)) as reasoning_tokens,
               round(sum(coalesce(cost_usd, 0)), 6) as cost_usd,
               sum(case when cost_usd is null and api != 'count_tokens' then 1 else 0 end) as unpriced_calls,
               sum(case when (coalesce(error, '') != '' or status is null or status >= 400) then 1 else 0 end)
                   as errors
        from calls
        group by 1, 2, 3
        """,
        replace=True,
    )
    db.create_view(
        "sessions",
        """
        select session_id, min(started_at) as first_call_at, max(started_at) as last_call_at,
               group_concat(distinct client) as clients,
               group_concat(distinct model) as models,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0) + coalesce(cache_write_1h_tokens, 0))
                   as cache_write_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               round(sum(coalesce(cost_usd, 0)), 6) as cost_usd,
               sum(case when cache_status = 'miss' then 1 else 0 end) as cache_misses,
               sum(case when (coalesce(error, '') != '' or status is null or status >= 400) then 1 else 0 end)
                   as errors
        from calls
        where session_id is not null
        group by session_id
        order by first_call_at desc
        """,
        replace=True,
    )
    db.create_view(
        "model_usage",
        """
        select coalesce(provider, '') as provider, coalesce(model, '') as model,
               count(*) as calls,
               sum(coalesce(input_tokens, 0)) as input_tokens,
               sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
               sum(coalesce(cache_write_5m_tokens, 0) + coalesce(cache_write_1h_tokens, 0))
                   as cache_write_tokens,
               sum(coalesce(output_tokens, 0)) as output_tokens,
               round(sum(coalesce(cost_usd, 0)), 6) as cost_usd,
               round(1.0 * sum(coalesce(cache_read_tokens, 0)) / nullif(sum(coalesce(input_tokens, 0)
                   + coalesce(cache_read_tokens, 0) + coalesce(cache_write_5m_tokens, 0)
                   + coalesce(cache_write_1h_tokens, 0)), 0), 4) as cache_read_share,
               round(avg(ttft_ms), 1) as avg_ttft_ms,
               round(avg(duration_ms), 1) as avg_duration_ms,
               sum(case when (coalesce(error, '') != '' or status is null or status >= 400) then 1 else 0 end)
                   as errors,
               min(started_at) as first_call_at, max(started_at) as last_call_at
        from calls
        where coalesce(api, '') != 'count_tokens'
        group by 1, 2
        order by cost_usd desc
        """,
        replace=True,
    )
    db.create_view(
        "errors",
        """
        select id, started_at, client, host, path, model, status, error, request_id, rules_applied
        from calls
        where (coalesce(error, '') != '' or status is null or status >= 400)
        order by started_at desc
        """,
        replace=True,
    )


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: its number (what `_sluice_migrations` records), its name, its body."""

    number: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calls_and_rate_limits", _migration_1_calls_and_rate_limits),
    Migration(2, "views", _migration_2_views),
    Migration(3, "credentials", _migration_3_credentials),
    Migration(4, "budgets", _migration_4_budgets),
    Migration(5, "cache_health_and_views", _migration_5_cache_health_and_views),
    Migration(6, "credential_history_and_routing", _migration_6_credential_history_and_routing),
    Migration(7, "alerts", _migration_7_alerts),
    Migration(8, "sandbox_events", _migration_8_sandbox_events),
    Migration(9, "region", _migration_9_region),
    Migration(10, "teams_and_rates", _migration_10_teams_and_rates),
    Migration(11, "one_definition_of_an_error", _migration_11_one_definition_of_an_error),
)


def migrate(db: sqlite_utils.Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Apply the migrations this database has not seen, each once, in order, each under an immediate
    transaction (another process may be applying them at the same moment)."""
    conn = db.conn
    conn.execute("create table if not exists _sluice_migrations (id integer primary key, applied_at text)")
    for migration in migrations:
        if _applied(db, migration):
            continue
        with immediate(conn):
            # Another process may have applied it while we waited for the lock.
            if not _applied(db, migration):
                migration.apply(db)
                conn.execute(
                    "insert into _sluice_migrations (id, applied_at) values (?, datetime('now'))",
                    (migration.number,),
                )


def _applied(db: sqlite_utils.Database, migration: Migration) -> bool:
    found = db.conn.execute("select 1 from _sluice_migrations where id = ?", (migration.number,))
    return found.fetchone() is not None


def up_to_date(db: sqlite_utils.Database) -> bool:
    """Whether every migration is recorded as applied: one read, for a database opened again."""
    try:
        latest = db.conn.execute("select max(id) from _sluice_migrations").fetchone()[0]
    except sqlite3.OperationalError:  # no such table: a new database
        return False
    return latest is not None and latest >= MIGRATIONS[-1].number
