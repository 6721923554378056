"""`sluice`: reports over the sluice database (the `sluice` console script).

    sluice usage [--db PATH] [--by DIMS] [--since WHEN] [--until WHEN] [--json | --csv | --html FILE]
    sluice quota [--db PATH] [--host HOST] [--credential NAME] [--json | --statusline]
    sluice quota --live [--config PATH] [--db PATH] [--host HOST] [--json]
    sluice migrate --from PATH --to postgresql://USER@HOST:PORT/DB

`--db` (or $SLUICE_DB) is a SQLite file or a PostgreSQL URL.

Every subcommand registers in SUBCOMMANDS, in one place. Reading never creates a database: a missing file is
an error (exit 1), an empty one a friendly line (exit 0). `quota --live` is the one that writes: it asks the
provider and records what it hears (state/quota_live.py), creating the database if need be.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import select
import sqlite3
import ssl
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlite_utils
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from rules.config import ConfigError, load_config
from rules.credential_files import TokenResponse
from rules.providers.anthropic.oauth_usage import SOURCE as OAUTH_USAGE_SOURCE
from state import html_report, move, quota_live, report, sandbox
from state.budgets import BudgetLedger, ClientBudget, TeamSpend, budget_usd
from state.netns import clean_stale
from state.oauth import CredentialDead, CredentialUnavailable, OAuthStore
from state.oauth_http import post_refresh
from state.pool import CredentialPool
from state.ratelimits import QuotaSummary, format_duration, format_percent, pool_statusline, statusline
from state.sandbox_env import SandboxError
from state.store import AnyStore, Database, PostgresStore, Store, open_store, postgres, redact, redact_error
from state.store.postgres import PgDatabase, is_postgres
from state.writer import RecordWriter

DEFAULT_DB = "sluice.db"
DB_ENV = "SLUICE_DB"
CONFIG_ENV = "SLUICE_CONFIG"

type Handler = Callable[[argparse.Namespace], int]
type Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_GROUP_TITLES = {
    "day": "Day",
    "model": "Model",
    "client": "Client",
    "host": "Host",
    "provider": "Provider",
    "api": "API",
    "hour": "Hour (UTC)",
    "session": "Session",
    "block": "5h block (UTC)",
}
# Wide enough for any table of ours: measuring against it gives a table's natural width.
_UNBOUNDED_WIDTH = 100_000
_STATUS_STYLES = {"allowed": "green", "allowed_warning": "yellow", "rejected": "bold red"}


class CliError(Exception):
    """A failure the user can act on: printed as `sluice: error: ...`, exit status 1."""


def clock() -> datetime:
    """Now, in UTC; the tests pin it."""
    return datetime.now(UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CliError as e:
        print(f"sluice: error: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:  # e.g. locked by a writer for longer than the busy timeout
        print(f"sluice: error: reading {redact(args.db)}: {redact_error(args.db, e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`sluice usage --csv | head`). Point stdout at devnull so that the
        # interpreter's final flush does not fail again (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description="Reports over the sluice database: usage and cost of LLM calls, provider rate limits.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH|URL",
        default=os.environ.get(DB_ENV) or DEFAULT_DB,
        help=f"the sluice database: a SQLite file or a postgresql:// URL "
        f"(default: ${DB_ENV}, else ./{DEFAULT_DB})",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(subparsers, common)
    return parser


def open_database(path: str) -> Database:
    """Open an existing sluice database, a file or a PostgreSQL URL (migrating it if it is older than this
    code); never create one."""
    if is_postgres(path):
        return _open_postgres(path)
    file = Path(path).expanduser()
    if not file.exists():
        raise CliError(
            f"no database at {path}: run the proxy (mitmdump -s addons/sluice.py) to create it, "
            f"or point --db or ${DB_ENV} at an existing one"
        )
    if not file.is_file():
        raise CliError(f"{path} is not a file")
    try:
        # Look before migrating: a read command must not add sluice's tables to some other database.
        probe = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        try:
            is_sluice = probe.execute(
                "select 1 from sqlite_master where type = 'table' and name = '_sluice_migrations'"
            ).fetchone()
        finally:
            probe.close()
        if not is_sluice:
            raise CliError(f"cannot open {path} as a sluice database: it has no sluice tables")
        return Store(file).connect()
    except sqlite3.Error as e:
        raise CliError(f"cannot open {path} as a sluice database: {e}") from e


def _open_postgres(url: str) -> PgDatabase:
    """A sluice database on PostgreSQL: refused, untouched, when it has no sluice tables (a read command must
    not add them to some other database). Messages name it without its password."""
    try:
        return postgres.open_migrated(url, only_sluice=True)
    except postgres.NotSluice:
        raise CliError(f"cannot open {redact(url)} as a sluice database: it has no sluice tables") from None
    except psycopg.Error as e:
        raise CliError(f"cannot open {redact(url)}: {redact_error(url, e)}") from None


def _stored_tokens(db: str) -> Path | PostgresStore | None:
    """Where the OAuth tokens of database `db` are: on PostgreSQL its secrets schema; beside a file, its
    secrets file (None when there is none: only the proxy's credential part creates it)."""
    if is_postgres(db):
        return PostgresStore(db)
    secrets = Store(db).secrets_path
    return secrets if secrets.exists() else None


# ── usage ────────────────────────────────────────


def _add_usage(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "usage",
        parents=[common],
        help="tokens, cost and errors of the recorded calls",
        description="Tokens, cost and errors of the recorded calls, grouped, with a total.",
    )
    parser.add_argument(
        "--by",
        type=_group_by_arg,
        default=report.DEFAULT_GROUP_BY,
        metavar="DIMS",
        help=f"comma-separated groups among {', '.join(report.GROUP_BY_COLUMNS)} (default: day,model)",
    )
    parser.add_argument(
        "--since",
        type=_since_arg,
        metavar="WHEN",
        help="only calls started at or after WHEN: 7d, 24h, 30m ago, a date (2026-11-20) or an ISO datetime "
        "(UTC unless it has an offset); default: all",
    )
    parser.add_argument(
        "--until",
        type=_until_arg,
        metavar="WHEN",
        help="only calls started before WHEN (same forms as --since; a date includes that whole day)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", dest="format", action="store_const", const="json", help="print a JSON list of groups"
    )
    output.add_argument("--csv", dest="format", action="store_const", const="csv", help="print CSV")
    output.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML page (inline SVG charts of spend and tokens over time, by model "
        "and by client; no scripts, nothing fetched) to FILE; --by does not apply",
    )
    parser.set_defaults(handler=run_usage, format="table")


def run_usage(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    try:
        if args.html:
            return _write_usage_html(database, args)
        usage = report.usage(database, group_by=args.by, since=args.since, until=args.until)
        if args.format == "json":
            _write_json([row.to_dict() for row in usage.rows])
        elif args.format == "csv":
            _write_usage_csv(usage)
        elif not usage.rows:
            print(_no_usage_message(args.db, usage, report.count_calls(database)))
        else:
            _print_table(_console(), _usage_table(usage))
    finally:
        database.close()
    return 0


def _write_usage_html(database: Database, args: argparse.Namespace) -> int:
    page = html_report.render(database, since=args.since, until=args.until, now=clock())
    target = Path(args.html).expanduser()
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot write {args.html}: {e.strerror or e}") from e
    print(f"wrote {args.html}")
    return 0


def _write_usage_csv(usage: report.UsageReport) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    spans = ["first_call_at", "last_call_at"] if set(usage.group_by) & set(report.SPAN_DIMENSIONS) else []
    writer.writerow([*usage.group_by, *spans, *report.USAGE_COLUMNS])
    for row in usage.rows:
        writer.writerow(["" if value is None else csv_cell(value) for value in row.to_dict().values()])


def _no_usage_message(path: str, usage: report.UsageReport, calls_in_database: int) -> str:
    if calls_in_database == 0:
        return f"No calls recorded in {path} yet: point a client at the proxy, then run this again."
    return f"No calls {_time_range(usage)} ({calls_in_database:,} recorded in {path} in all)."


def _usage_table(usage: report.UsageReport) -> Table:
    table = Table(
        title=f"Usage by {', '.join(usage.group_by)}",
        caption=_time_range(usage) if usage.since or usage.until else None,
        title_justify="left",
        caption_justify="left",
    )
    for name in usage.group_by:
        table.add_column(_GROUP_TITLES[name], no_wrap=True)
    spans = bool(set(usage.group_by) & set(report.SPAN_DIMENSIONS))
    if spans:
        table.add_column("First call", no_wrap=True)
        table.add_column("Last call", no_wrap=True)
    for title in ("Calls", "Input", "Cache read", "Cache write", "Output", "Reasoning", "Cost"):
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("Unpriced", justify="right", no_wrap=True)
    table.add_column("Errors", justify="right", no_wrap=True)
    for index, row in enumerate(usage.rows):
        keys = [
            Text("(none)", style="dim") if value is None else Text(printable(value))
            for value in row.group.values()
        ]
        if spans:
            keys += [Text(_stored_time_text(row.first_call_at)), Text(_stored_time_text(row.last_call_at))]
        _add_row(table, *keys, *_usage_cells(row), end_section=index == len(usage.rows) - 1)
    blanks = [Text("")] * (len(usage.group_by) - 1 + (2 if spans else 0))
    table.add_row(Text("Total"), *blanks, *_usage_cells(usage.total), style="bold")
    return table


def _usage_cells(row: report.UsageRow) -> list[Text]:
    counts = [
        row.calls,
        row.input_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.output_tokens,
        row.reasoning_tokens,
    ]
    return [
        *(Text(f"{count:,}") for count in counts),
        Text(report.cost_text(format_usd(row.cost_usd), row), style="yellow" if row.unpriced_calls else ""),
        Text(f"{row.unpriced_calls:,}", style="yellow" if row.unpriced_calls else ""),
        Text(f"{row.errors:,}", style="red" if row.errors else ""),
    ]


def _stored_time_text(text: str | None) -> str:
    """A stored ISO time as `2026-11-20 09:12 UTC`."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def format_usd(amount: Decimal) -> str:
    """Dollars with four decimals ($0.0123), more when a non-zero amount would show as $0.0000."""
    places = 4
    while places < 12 and amount != 0 and abs(amount) < Decimal(5).scaleb(-places - 1):
        places += 1
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{places}f}"


def _time_range(usage: report.UsageReport) -> str:
    parts = []
    if usage.since is not None:
        parts.append(f"since {_utc_text(usage.since)}")
    if usage.until is not None:
        parts.append(f"before {_utc_text(usage.until)}")
    return " and ".join(parts) if parts else "at all"


# ── quota ────────────────────────────────────────


def _add_quota(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "quota",
        parents=[common],
        help="latest rate-limit state per upstream credential",
        description="The latest rate-limit headers seen for each upstream credential, read for humans.",
    )
    parser.add_argument("--host", help="only this upstream host (e.g. api.anthropic.com)")
    parser.add_argument("--credential", metavar="NAME", help="only this upstream credential")
    parser.add_argument(
        "--live",
        action="store_true",
        help="ask the provider now: for each OAuth upstream in the config, read its 5-hour and 7-day windows "
        "from the OAuth usage endpoint (the one Claude Code's /usage reads), show them and record them",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=os.environ.get(CONFIG_ENV),
        help=f"the sluice config naming the OAuth upstreams, for --live (default: ${CONFIG_ENV})",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", dest="format", action="store_const", const="json", help="print the normalized structure"
    )
    output.add_argument(
        "--statusline",
        dest="format",
        action="store_const",
        const="statusline",
        help="print one short line (5h 42%% · 7d 13%% · resets 2h10m) for a shell prompt or a status line; "
        "with several credentials, each window at its worst across them, the worst first",
    )
    parser.add_argument(
        "--each",
        action="store_true",
        help="with --statusline: one part per credential instead of the worst of them (long with a pool)",
    )
    parser.set_defaults(handler=run_quota, format="table")


def run_quota(args: argparse.Namespace) -> int:
    if args.live:
        return run_quota_live(args)
    if args.format == "statusline":
        # Claude Code's statusLine runs the command with a JSON description of the session on stdin; the
        # line does not depend on it, but it is read so the writer never meets a closed pipe.
        _drain_stdin()
    database = open_database(args.db)
    try:
        quotas = report.quota(database, host=args.host, credential=args.credential)
    finally:
        database.close()
    now = clock()
    if args.format == "json":
        _write_json([quota.to_dict() for quota in quotas])
    elif args.format == "statusline":
        print(printable(quota_statusline(quotas, now, each=args.each)))
    elif not quotas:
        scope = " matching" if args.host is not None or args.credential is not None else ""
        print(f"No{scope} rate-limit headers recorded in {args.db} yet.")
    else:
        _print_quota_tables(quotas, now)
    return 0


def run_quota_live(args: argparse.Namespace) -> int:
    """`sluice quota --live`: read each OAuth upstream's usage endpoint, show it, record it."""
    if args.format == "statusline":
        raise CliError(
            "--live asks the provider each time it runs, too often for a status line (and the usage "
            "endpoint rate-limits hard): let the proxy poll it (--set sluice_quota_poll=300) and keep "
            "`sluice quota --statusline` plain"
        )
    if not args.config:
        raise CliError(
            f"--live reads the OAuth credentials from the config: give --config PATH or ${CONFIG_ENV}"
        )
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise CliError(str(e)) from None
    upstreams = [
        u
        for u in config.upstreams
        if u.oauth is not None
        and u.oauth.mint is None  # a minted token has no subscription to read
        and (args.host is None or args.host in (u.host, quota_live.row_host(u)))
        and (args.credential is None or args.credential == quota_live.credential_label(u.oauth))
    ]
    if not upstreams:
        scope = " matching" if args.host is not None or args.credential is not None else ""
        raise CliError(f"no{scope} [[upstreams]] with oauth in {args.config}: --live reads OAuth logins only")
    # Created (and migrated) if missing: the readings are recorded in it.
    try:
        sluice_store = open_store(args.db)
    except psycopg.Error as e:
        raise CliError(f"cannot open {redact(args.db)}: {redact_error(args.db, e)}") from None
    database = sluice_store.connect()
    pool = CredentialPool(database)
    tokens = sluice_store if isinstance(sluice_store, PostgresStore) else sluice_store.secrets_path
    store = OAuthStore(tokens, on_event=_pool_history(pool))
    try:
        # The default context verifies like any client: the system's CAs, or SSL_CERT_FILE when set.
        results = asyncio.run(
            quota_live.read_live(
                upstreams,
                store,
                Path(args.config).expanduser().resolve().parent,
                ssl.create_default_context(),
            )
        )
        readings = [result for result in results if isinstance(result, quota_live.UsageReading)]
        for upstream in upstreams:
            # What the proxies route new conversations by: the freshest word on each login's room.
            for reading in readings:
                if reading.host == quota_live.row_host(upstream) and upstream.oauth is not None:
                    quota_live.note_in_pool(pool, upstream.host, reading)
    finally:
        store.close()
        database.close()
    try:
        _record_readings(sluice_store, readings)
    finally:
        sluice_store.close()  # on PostgreSQL, its reading pool's connections and thread
    now = clock()
    quotas = [
        report.CredentialQuota(reading.host, reading.credential, OAUTH_USAGE_SOURCE, reading.summary)
        for reading in readings
    ]
    if args.format == "json":
        _write_json([quota.to_dict() for quota in quotas])
    else:
        _print_quota_tables(quotas, now)
    failures = [result for result in results if isinstance(result, str)]
    for failure in failures:
        print(printable(f"sluice: error: {failure}"), file=sys.stderr)
    return 1 if failures else 0


def _pool_history(pool: CredentialPool) -> Callable[[str, str, str], None]:
    """An OAuth store's events (a refresh made by this command), into the pool's history."""

    def record(key: str, event: str, detail: str) -> None:
        pool.record_event(key, event, detail, fingerprint=pool.oauth_fingerprint(key))

    return record


def _record_readings(store: AnyStore, readings: Sequence[quota_live.UsageReading]) -> None:
    """Into `rate_limits`, through the same writer (and the same newest-wins rule) as the proxy's calls."""
    if not readings:
        return
    writer = RecordWriter(store.connect, path=store.file if isinstance(store, Store) else None)
    writer.start()
    for reading in readings:
        writer.put(reading.record())
    writer.close()
    if writer.stats.dropped:
        raise CliError(f"the readings could not be recorded in {store.display}: {writer.stats.last_error}")


def _drain_stdin(limit: int = 1 << 20, wait_s: float = 0.5) -> None:
    """Read and discard what is waiting on a piped stdin, without ever blocking on a terminal or on a pipe
    whose writer keeps it open and sends nothing (at most `wait_s` for each read)."""
    stream = sys.stdin
    try:
        if stream is None or stream.isatty():
            return
        descriptor = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return  # no real stdin (closed, or replaced by a test runner)
    read = 0
    while read < limit:
        try:
            ready, _, _ = select.select([descriptor], [], [], wait_s)
            if not ready:
                return
            chunk = os.read(descriptor, 65536)
        except (OSError, ValueError):
            return
        if not chunk:
            return
        read += len(chunk)


def quota_statusline(quotas: Sequence[report.CredentialQuota], now: datetime, *, each: bool = False) -> str:
    """One line for all credentials: the worst of a pool (state/ratelimits.py), or with `each` one part per
    credential, each named."""
    if not quotas:
        return "no rate limits seen"
    if len(quotas) == 1:
        return statusline(quotas[0].summary, now)
    if not each:
        return pool_statusline([quota.summary for quota in quotas], now)
    return " | ".join(
        f"{quota.credential or quota.host}: {statusline(quota.summary, now)}" for quota in quotas
    )


def _print_quota_tables(quotas: Sequence[report.CredentialQuota], now: datetime) -> None:
    console = _console()
    for index, quota in enumerate(quotas):
        if index:
            console.print()
        _print_table(console, _quota_table(quota, now))


def _quota_table(quota: report.CredentialQuota, now: datetime) -> Table:
    summary = quota.summary
    title = Text()
    title.append(printable(quota.host), style="bold")
    title.append(f" · {printable(quota.credential or '(no credential)')}")
    title.append(f" · seen {_ago(summary.observed_at, now)} ({_utc_text(summary.observed_at, now)})", "dim")
    if quota.call_id == OAUTH_USAGE_SOURCE:
        title.append(" · from the OAuth usage endpoint", "dim")
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("limit", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("resets", no_wrap=True)
    for name, state, reset_at, seen in _quota_lines(summary):
        if seen < summary.observed_at - timedelta(seconds=1):
            state.append(f" (seen {_ago(seen, now)})", style="dim")
        _add_row(table, Text(name), state, Text(_reset_text(reset_at, now)))
    return table


def _quota_lines(summary: QuotaSummary) -> list[tuple[str, Text, datetime | None, datetime]]:
    """(what, state, reset, when seen) for every item of a summary, in display order."""
    lines: list[tuple[str, Text, datetime | None, datetime]] = []
    for limit in summary.limits:
        state = Text(f"{_count(limit.remaining)} / {_count(limit.limit)} left")
        if limit.used_fraction is not None:
            state.append(f" ({format_percent(limit.used_fraction)} used)", style="dim")
        lines.append((limit.name, state, limit.reset_at, limit.observed_at))
    unified = summary.unified
    if unified is not None:
        state = _status_text(unified.status)
        if unified.representative_claim:
            state.append(f" · claim {unified.representative_claim}")
        # Windows read from the usage endpoint alone come with no overall status: no line of question marks.
        if unified.status is not None or unified.representative_claim or unified.reset_at is not None:
            lines.append(("subscription", state, unified.reset_at, unified.observed_at))
        for window in unified.windows:
            state = Text(
                "? used" if window.utilization is None else f"{format_percent(window.utilization)} used"
            )
            if window.status:
                state.append(" · ").append_text(_status_text(window.status))
            if window.surpassed_threshold is not None:
                state.append(f" · past {format_percent(window.surpassed_threshold)}", style="yellow")
            lines.append((window.name, state, window.reset_at, window.observed_at))
        if unified.fallback is not None or unified.fallback_percentage is not None:
            parts = [unified.fallback] if unified.fallback else []
            if unified.fallback_percentage is not None:
                parts.append(format_percent(unified.fallback_percentage))
            lines.append(("fallback", Text(" · ".join(parts)), None, unified.observed_at))
        overage = unified.overage
        if overage is not None:
            state = _status_text(overage.status)
            if overage.utilization is not None:
                state.append(f" · {format_percent(overage.utilization)} used")
            if overage.disabled_reason:
                state.append(f" · disabled: {overage.disabled_reason}")
            lines.append(("overage", state, overage.reset_at, overage.observed_at))
    if summary.retry_at is not None:
        lines.append(("retry after", Text(""), summary.retry_at, summary.observed_at))
    for raw in summary.other:
        lines.append((raw.name, Text(raw.value), None, raw.observed_at))
    return lines


def _status_text(status: str | None) -> Text:
    if status is None:
        return Text("?")
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def _reset_text(reset_at: datetime | None, now: datetime) -> str:
    if reset_at is None:
        return ""
    if reset_at >= now:
        return f"in {format_duration(reset_at - now)} ({_utc_text(reset_at, now)})"
    return f"{format_duration(now - reset_at)} ago ({_utc_text(reset_at, now)})"


def _ago(moment: datetime, now: datetime) -> str:
    return "just now" if now - moment < timedelta(seconds=1) else f"{format_duration(now - moment)} ago"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


# ── shared ────────────────────────────────────────


def _add_credentials(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "credentials",
        parents=[common],
        help="each upstream credential's state: active, cooling down, disabled; OAuth expiry",
        description="The upstream credential pool as sluice sees it. Never prints a key or token.",
    )
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--reset",
        nargs=2,
        metavar=("HOST", "LABEL"),
        help="make a cooling or disabled credential active again (LABEL as listed, or its fingerprint)",
    )
    action.add_argument(
        "--refresh",
        nargs=2,
        metavar=("HOST", "LABEL"),
        help="refresh an OAuth credential's access token now (needs --config; once across proxies, as any "
        "refresh)",
    )
    action.add_argument(
        "--events",
        action="store_true",
        help="the pool's history: refreshed, cooled (why, until when), disabled, recovered, reset, quota "
        "status changes, conversations moved",
    )
    parser.add_argument(
        "--since",
        type=_since_arg,
        metavar="WHEN",
        help="with --events: only events at or after WHEN (7d, 24h, a date...); default: the last 100",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=os.environ.get(CONFIG_ENV),
        help=f"the proxy's sluice.toml (for --refresh: where the token endpoint is; default: ${CONFIG_ENV})",
    )
    parser.set_defaults(handler=run_credentials, format="table")


def run_credentials(args: argparse.Namespace) -> int:
    if args.refresh:
        return _refresh_by_hand(args)
    if args.events:
        return _show_events(args)
    database = open_database(args.db)
    tokens = _stored_tokens(args.db)
    store = OAuthStore(tokens) if tokens is not None else None
    try:
        pool = CredentialPool(database)
        if args.reset:
            host, label = args.reset
            reset = pool.reset(host, label)
            if not reset:
                raise CliError(f"no credential {label!r} for {host}")
            for state in reset:
                if state.kind == "oauth" and store is not None:
                    store.clear_failure(host)
                print(printable(f"{host} {state.label}: active again"))
            return 0
        states = pool.states()
        oauth = {host: store.status(host) for host in {s.host for s in states}} if store else {}
    finally:
        database.close()
        if store is not None:
            store.close()
    now = clock()
    rows = []
    for state in states:
        status = oauth.get(state.host) if state.kind == "oauth" else None
        rows.append(
            {
                "host": state.host,
                "label": state.label,
                "fingerprint": state.fingerprint,
                "kind": state.kind,
                "configured": state.position is not None,
                "state": state.state,
                "reason": state.reason,
                "cooling_until": _iso(state.cooling_until),
                "oauth_expires_at": _iso(status.expires_at if status else None),
                "oauth_failed": status.failed_reason if status else None,
                "quota_status": state.quota_status,
                "headroom": state.headroom,
            }
        )
    if args.format == "json":
        _write_json(rows)
        return 0
    if not rows:
        print("no upstream credentials configured yet")
        return 0
    table = Table(title="Upstream credentials")
    for column in ("Host", "Credential", "State", "Why", "Until", "Limits", "OAuth expires"):
        table.add_column(column)
    for state in states:
        status = oauth.get(state.host) if state.kind == "oauth" else None
        until = datetime.fromtimestamp(state.cooling_until, UTC) if state.cooling_until else None
        expires = datetime.fromtimestamp(status.expires_at, UTC) if status and status.expires_at else None
        _add_row(
            table,
            state.host,
            state.label + ("" if state.position is not None else " (no longer configured)"),
            state.state,
            state.reason or (status.failed_reason if status else None) or "",
            _reset_text(until, now) if until and until > now else "",
            _limits_text(state.quota_status, state.headroom),
            _expiry_text(expires, now) if expires else "",
        )
    _print_table(Console(), table)
    return 0


def _limits_text(quota_status: str | None, headroom: float | None) -> str:
    """What the provider last said of a credential's limits: `allowed, 62% left`."""
    left = f"{format_percent(headroom)} left" if headroom is not None else ""
    return ", ".join(part for part in (quota_status, left) if part)


def _refresh_by_hand(args: argparse.Namespace) -> int:
    host, label = args.refresh
    if not args.config:
        raise CliError("--refresh needs --config: the proxy's sluice.toml says where the token endpoint is")
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as e:
        raise CliError(str(e)) from None
    upstream = next((u for u in config.upstreams if u.host == host.lower().rstrip(".") and u.oauth), None)
    if upstream is None or upstream.oauth is None:
        raise CliError(f"{args.config} has no OAuth credential for {host}")
    oauth = upstream.oauth
    if oauth.mint is not None:
        raise CliError(
            f"{host}'s access token is minted by the proxy itself, ahead of expiry: nothing to refresh"
        )
    database = open_database(args.db)
    tokens = _stored_tokens(args.db)
    if tokens is None:
        raise CliError(f"no OAuth tokens stored beside {args.db}: start the proxy once so it seeds them")
    pool = CredentialPool(database)
    store: OAuthStore | None = None
    try:
        state = next(
            (
                s
                for s in pool.states()
                if s.host == upstream.host and s.kind == "oauth" and label in (s.label, s.fingerprint)
            ),
            None,
        )
        if state is None:
            raise CliError(f"no OAuth credential {label!r} for {upstream.host}")
        store = OAuthStore(tokens, on_event=_pool_history(pool))
        context = ssl.create_default_context()  # honours SSL_CERT_FILE, as the proxy's trust does

        async def refresh(token: str) -> TokenResponse:
            return await asyncio.to_thread(post_refresh, oauth, token, context)

        try:
            status = asyncio.run(store.refresh_now(upstream.host, refresh))
        except (CredentialDead, CredentialUnavailable) as e:
            raise CliError(f"{upstream.host} {state.label}: {e}") from None
    finally:
        database.close()
        if store is not None:
            store.close()
    until = _iso(status.expires_at) or "no known expiry"
    print(printable(f"{upstream.host} {state.label}: refreshed; the new access token is good until {until}"))
    return 0


def _show_events(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    try:
        pool = CredentialPool(database)
        since = args.since.timestamp() if args.since else None
        events = pool.events(since=since, limit=100_000 if since is not None else 100)
    finally:
        database.close()
    rows = [
        {
            "at": _iso(event.at),
            "host": event.host,
            "credential": event.label,
            "fingerprint": event.fingerprint,
            "event": event.event,
            "detail": event.detail,
            "until": _iso(event.until),
        }
        for event in events
    ]
    if args.format == "json":
        _write_json(rows)
        return 0
    if not rows:
        print("no credential events recorded yet")
        return 0
    now = clock()
    table = Table(title="Credential events (newest first)")
    for column in ("When (UTC)", "Host", "Credential", "Event", "What happened", "Until"):
        table.add_column(column)
    for event in events:
        until = datetime.fromtimestamp(event.until, UTC) if event.until else None
        _add_row(
            table,
            datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            event.host,
            event.label or "",
            event.event,
            event.detail or "",
            _reset_text(until, now) if until and until > now else "",
        )
    _print_table(Console(), table)
    return 0


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


def _expiry_text(moment: datetime, now: datetime) -> str:
    if moment > now:
        return _reset_text(moment, now)
    return f"expired {format_duration(now - moment)} ago"


def _add_clients(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "clients",
        parents=[common],
        help="each budgeted client's spend, reservations, limit and reset time",
        description="Budgets as sluice enforces them, for the current period of each client (UTC).",
    )
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    parser.set_defaults(handler=run_clients, format="table")


def run_clients(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    try:
        budgets = BudgetLedger(database).status()
    finally:
        database.close()
    if args.format == "json":
        _write_json([budget.to_dict() for budget in budgets])
        return 0
    if not budgets:
        print("no client budgets configured")
        return 0
    now = clock()
    table = Table(title="Client budgets")
    for column in ("Client", "Limit", "Spent", "Reserved", "Left", "Resets"):
        table.add_column(column, justify="left" if column in ("Client", "Resets") else "right")
    for budget in budgets:
        _add_row(table, budget.client, *_budget_cells(budget, now))
    _print_table(Console(), table)
    return 0


def _budget_cells(budget: ClientBudget | TeamSpend, now: datetime) -> list[str]:
    """Limit, spent, reserved, left and reset of a client's or a team's budget, as the tables show them."""
    left = max(0.0, budget.limit_usd - budget.spent_usd - budget.reserved_usd)
    scope = "total" if budget.period == "total" else f"/{budget.period}"
    return [
        f"{budget_usd(budget.limit_usd)} {scope}",
        f"${budget.spent_usd:,.4f}",
        f"${budget.reserved_usd:,.4f}",
        f"${left:,.4f}",
        _reset_text(budget.resets_at, now) if budget.resets_at else "never",
    ]


def _add_teams(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "teams",
        parents=[common],
        help="each team budget's members, spend, reservations, limit and reset time",
        description="Team budgets as sluice enforces them, for the current period of each team (UTC).",
    )
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    parser.set_defaults(handler=run_teams, format="table")


def run_teams(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    try:
        teams = BudgetLedger(database).team_status()
    finally:
        database.close()
    if args.format == "json":
        _write_json([team.to_dict() for team in teams])
        return 0
    if not teams:
        print("no team budgets configured")
        return 0
    now = clock()
    table = Table(title="Team budgets")
    for column in ("Team", "Members", "Limit", "Spent", "Reserved", "Left", "Resets"):
        table.add_column(column, justify="left" if column in ("Team", "Members", "Resets") else "right")
    for team in teams:
        _add_row(table, team.team, ", ".join(team.members), *_budget_cells(team, now))
    _print_table(Console(), table)
    return 0


# ── sandbox ──────────────────────────────────────


def _add_sandbox(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        parents=[common],
        help="run a command in a network namespace whose only way out is sluice",
        description=(
            "Run COMMAND in a fresh network namespace (Linux, as root) whose only way out is a sluice of its "
            "own in transparent mode: provider calls are credential-swapped and metered, hosts on the "
            "config's [sandbox] allow list pass through untouched, everything else is refused and recorded "
            "(table sandbox_events). COMMAND gets the CA and its client key in its environment, never a real "
            "key; its exit status is passed back."
        ),
        usage="sluice sandbox --config PATH [--db PATH] [--user USER] [--client NAME] [--set OPTION=VALUE] "
        "-- COMMAND [ARGS...]",
    )
    parser.add_argument("--config", metavar="PATH", help="sluice's TOML config (required to run a command)")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="only tear down what sandboxes killed with SIGKILL left behind, then exit",
    )
    parser.add_argument(
        "--user", metavar="USER", help="run COMMAND as this user (default: the user who ran sudo)"
    )
    parser.add_argument(
        "--client", metavar="NAME", help="whose client key COMMAND gets (default: [sandbox] client)"
    )
    parser.add_argument(
        "--set",
        metavar="OPTION=VALUE",
        dest="options",
        action="append",
        default=[],
        help="a mitmproxy or sluice option for the sandbox's mitmdump (repeatable)",
    )
    parser.add_argument(
        "--confdir",
        metavar="DIR",
        default="~/.mitmproxy",
        help="mitmproxy's directory, where its CA lives (default: ~/.mitmproxy)",
    )
    parser.add_argument(
        "--log", metavar="PATH", help="keep the sandbox's mitmdump output here (default: not kept)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    parser.set_defaults(handler=run_sandbox)


def run_sandbox(args: argparse.Namespace) -> int:
    if args.clean:
        try:
            sandbox.check_can_run()
        except SandboxError as e:
            raise CliError(f"sandbox: {e}") from None
        for namespace in clean_stale():
            print(f"sluice sandbox: cleaned up after {namespace}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.config is None:
        raise CliError("sandbox: --config is required (sluice sandbox --config sluice.toml -- COMMAND)")
    if not command:
        raise CliError("sandbox: no command given (sluice sandbox --config sluice.toml -- COMMAND)")
    request = sandbox.Request(
        config=Path(args.config).expanduser(),
        db=Path(args.db).expanduser(),
        command=command,
        user=args.user,
        client=args.client,
        mitmdump_options=args.options,
        confdir=Path(args.confdir),
        log=Path(args.log).expanduser() if args.log else None,
    )
    started = sandbox.now_iso()
    try:
        return sandbox.run_sandbox(request)
    except SandboxError as e:
        raise CliError(f"sandbox: {e}") from None
    finally:
        _print_refusals(request.db, started)


def _print_refusals(db: Path, since: str, shown: int = 20) -> None:
    """What the egress policy refused during this run (also in the table `sandbox_events`), on stderr."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "select kind, host, port, reason from sandbox_events where at >= ? order by at", (since,)
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return  # no database or no table yet: nothing was recorded
    for kind, host, port, reason in rows[:shown]:
        where = f"{host}:{port}" if port else host
        print(f"sluice sandbox: refused {kind} {printable(where)}: {printable(reason)}", file=sys.stderr)
    if len(rows) > shown:
        print(f"sluice sandbox: ... and {len(rows) - shown} more (table sandbox_events)", file=sys.stderr)


# ── doctor ────────────────────────────────────────


def _add_doctor(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "doctor",
        parents=[common],
        help="check everything a first call needs, and say how to fix what fails",
        description="Checks Python and mitmproxy, the mitmproxy CA and the variables clients trust it by, "
        "HTTPS_PROXY and NO_PROXY, the config and its env:/file: references (values never shown), the "
        "database, and with --online each upstream key. Exit status 0 only when nothing fails.",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="the TOML config the proxy runs with (sluice_config)"
    )
    parser.add_argument(
        "--confdir",
        metavar="DIR",
        default="~/.mitmproxy",
        help="mitmproxy's confdir, where its CA lives (default: ~/.mitmproxy)",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="also ask each upstream key for the provider's model list (GET /v1/models, free), directly",
    )
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    parser.set_defaults(handler=run_doctor, format="text")


def run_doctor(args: argparse.Namespace) -> int:
    from state import doctor

    checks = doctor.run_checks(
        config_path=args.config, db_path=args.db, confdir=args.confdir, env=os.environ, online=args.online
    )
    if args.format == "json":
        _write_json({"ok": doctor.passed(checks), "checks": [check.to_dict() for check in checks]})
    else:
        marks = {"pass": "ok  ", "fail": "FAIL", "skip": "--  "}
        width = max(len(check.name) for check in checks)
        for check in checks:
            print(printable(f"{marks[check.status]}  {check.name:<{width}}  {check.detail}"))
            if check.status == "fail" and check.advice:
                print(printable(f"      {'':<{width}}  -> {check.advice}"))
        failed = sum(check.status == "fail" for check in checks)
        print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 0 if doctor.passed(checks) else 1


# ── replay ────────────────────────────────────────


def _add_replay(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="what a new config's request rules would change in flows saved with -w (nothing is sent)",
        description="Runs the request rules of a config over the LLM requests in a flow file saved with "
        "mitmdump -w, without sending anything, and reports per request: bytes added, system blocks "
        "injected, cache breakpoints before and after the cap, and whether the prompt-cache prefix would "
        "change (the cached conversation would be written anew).",
    )
    parser.add_argument("flows", metavar="FLOWS", help="a flow file saved with -w (mitmdump, mitmweb)")
    parser.add_argument("--config", metavar="PATH", required=True, help="the config to try (TOML)")
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    parser.set_defaults(handler=run_replay, format="table")


def run_replay(args: argparse.Namespace) -> int:
    from rules.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise CliError(
            f"the config cannot be used:\n  {e.block().replace(chr(10), chr(10) + '  ')}"
        ) from None
    # Reading flow files needs mitmproxy, which nothing under state/ imports: only this command loads it.
    from addons.replay import replay_file

    try:
        report = replay_file(args.flows, config, Path(args.config).expanduser().resolve().parent)
    except ValueError as e:
        raise CliError(str(e)) from None
    for warning in report.warnings:
        print(printable(f"sluice: warning: {warning}"), file=sys.stderr)
    if args.format == "json":
        _write_json([request.to_dict() for request in report.requests])
        return 0
    if not report.requests:
        print(f"No LLM requests among the {report.flows:,} flows in {args.flows}.")
        return 0
    table = Table(title=f"{args.config} over {args.flows}", title_justify="left")
    for column in ("Flow", "Request", "Bytes", "Injected", "Breakpoints", "Cache prefix"):
        table.add_column(column, no_wrap=column != "Cache prefix")
    for request in report.requests:
        breakpoints = (
            f"{request.breakpoints_before} -> {request.breakpoints_after}"
            if request.breakpoints_before is not None
            else ""
        )
        prefix = request.prefix + (f": {request.prefix_note}" if request.prefix_note else "")
        _add_row(
            table,
            request.flow_id[:8],
            f"{request.client or '-'} {request.host}{request.path} {request.model or ''}".strip(),
            f"{request.bytes_added:+,}",
            ", ".join(request.blocks_injected),
            breakpoints,
            Text(
                prefix + (f" ({request.note})" if request.note else ""),
                style="red" if request.prefix == "changed" else "",
            ),
        )
    _print_table(_console(), table)
    busted = sum(request.prefix == "changed" for request in report.requests)
    print(f"{busted} of {len(report.requests)} requests would write their cached prompt prefix anew.")
    return 0


# ── migrate ──────────────────────────────────────


def _add_migrate(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="move a SQLite sluice database's history into a PostgreSQL one",
        description="Copy every table the proxies write (calls, rate limits, the credential pool and its "
        "history, budgets and holds, rate admissions, alerts, sandbox events) from a SQLite sluice database "
        "into a PostgreSQL one, creating sluice's tables there if need be. Rows already there are left as "
        "they are: running it twice adds nothing, and a run that stopped half way is completed by running "
        "it again. The OAuth secrets file (<db>.secrets.db) is never copied: log in again on PostgreSQL.",
        usage="sluice migrate --from PATH --to postgresql://USER@HOST:PORT/DB",
    )
    parser.add_argument(
        "--from", dest="source", metavar="PATH", required=True, help="the SQLite sluice database"
    )
    parser.add_argument(
        "--to",
        dest="target",
        metavar="URL",
        required=True,
        help="the PostgreSQL database (libpq URL; PGPASSWORD and the other PG* variables apply)",
    )
    parser.set_defaults(handler=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    if not is_postgres(args.target):
        raise CliError(f"--to: a PostgreSQL URL (postgresql://…), not {redact(args.target)}")
    source = open_database(args.source)
    if not isinstance(source, sqlite_utils.Database):
        raise CliError("--from: a SQLite sluice database file")
    try:
        target_store = open_store(args.target)  # sluice's tables created there if need be
    except psycopg.Error as e:
        source.close()
        raise CliError(f"cannot open {redact(args.target)}: {redact_error(args.target, e)}") from None

    def progress(moved: move.Moved) -> None:
        print(f"sluice migrate: {moved.table}: {moved.read:,} read, {moved.added:,} added", file=sys.stderr)

    target = target_store.connect()
    try:
        assert isinstance(target, PgDatabase)  # open_store gave a PostgreSQL store for a PostgreSQL URL
        results = move.move_history(source, target, progress=progress)
    finally:
        target.close()
        target_store.close()
        source.close()
    table = Table(title=f"{args.source} → {redact(args.target)}")
    for heading in ("table", "rows read", "added", "already there", "refused"):
        table.add_column(heading, justify="left" if heading == "table" else "right")
    for moved in results:
        refused = len(moved.refused)
        there = moved.read - moved.added - refused
        _add_row(table, moved.table, f"{moved.read:,}", f"{moved.added:,}", f"{there:,}", f"{refused:,}")
    _print_table(_console(), table)
    for moved in results:
        for reason in moved.refused:
            print(f"sluice migrate: not copied: {reason}", file=sys.stderr)
    return 1 if any(moved.refused for moved in results) else 0


# Every subcommand, in the order `sluice --help` lists them. A new one is an `_add_<name>(subparsers,
# common)` function that adds its parser with `parents=[common]` (for --db) and sets `handler=`,
# appended here.
SUBCOMMANDS: tuple[Callable[[Subparsers, argparse.ArgumentParser], None], ...] = (
    _add_usage,
    _add_quota,
    _add_credentials,
    _add_clients,
    _add_teams,
    _add_sandbox,
    _add_doctor,
    _add_replay,
    _add_migrate,
)


def _console() -> Console:
    # Bound to the current sys.stdout at call time, so redirections (and pytest's capsys) see the output.
    return Console(file=sys.stdout, highlight=False)


# What a terminal acts on instead of showing: C0 and C1 controls (ESC starts a sequence that can move the
# cursor, rewrite the screen or the window title, or in some terminals more), DEL, and the Unicode
# direction marks that reorder what is shown (the "Trojan Source" characters). Recorded values — model
# names, client names, paths, header values — come from clients and upstreams, so each is shown escaped.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# OWASP's CSV injection advice: a cell a spreadsheet would read as a formula starts with a quote instead.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on written out as an escape (`\\x1b`)."""
    return _UNPRINTABLE.sub(lambda match: ascii(match.group())[1:-1], text)


def csv_cell(value: object) -> object:
    """A value as a CSV cell: text escaped as for the terminal, and never read as a formula."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _add_row(table: Table, *cells: str | Text, **options: Any) -> None:
    """`table.add_row` for cells that may hold recorded values: plain text (never Rich markup: a client
    name such as `[link=...]` is shown as written), with unprintable characters escaped."""
    table.add_row(*(_cell(cell) for cell in cells), **options)


def _cell(cell: str | Text) -> Text:
    if isinstance(cell, str):
        return Text(printable(cell))
    safe = printable(cell.plain)
    return cell if safe == cell.plain else Text(safe, style=cell.style)


def _print_table(console: Console, table: Table) -> None:
    """Print a table at its natural width even past the terminal's: a number must never be cut or wrapped."""
    unbounded = console.options.update_width(_UNBOUNDED_WIDTH)
    console.width = max(console.width, Measurement.get(console, unbounded, table).maximum)
    console.print(table, crop=False)


def _write_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _utc_text(moment: datetime, now: datetime | None = None) -> str:
    """`03:46:02 UTC` on the day of `now`, with the date otherwise."""
    moment = moment.astimezone(UTC)
    if now is not None and moment.date() == now.astimezone(UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    if now is None and moment.time() == datetime.min.time():
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _group_by_arg(text: str) -> tuple[str, ...]:
    try:
        return report.parse_group_by(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _since_arg(text: str) -> datetime:
    try:
        return report.parse_time(text, datetime.now(UTC))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _until_arg(text: str) -> datetime:
    try:
        return report.parse_time(text, datetime.now(UTC), end_of_day=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
