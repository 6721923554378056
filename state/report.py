"""Read-only queries behind `sluice usage` and `sluice quota`, over an injected connection of either engine
(a `sqlite_utils.Database`, or a PostgreSQL store's `PgDatabase`), giving the same answers on both.

Every function returns plain dataclasses; formatting belongs to `state.cli`. Token counts are summed as
integers, costs as decimals (the sum of the stored values as written, not of their binary approximations), so
totals are exact to the token and do not drift in the last digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlite_utils

from rules.call_outcome import ERROR_SQL
from rules.times import parse_duration
from state.ratelimits import QuotaSummary, summarize
from state.store import Database
from state.store.postgres import PgDatabase

# The dimensions `usage` can group by, and the SQL expression of each over `calls` (SQLite's; PostgreSQL's
# differ where SQLite's date functions are used: `_POSTGRES_GROUP_BY`).
GROUP_BY_COLUMNS: dict[str, str] = {
    "day": "date(started_at)",
    "model": "model",
    "client": "client",
    "host": "host",
    "provider": "provider",
    "region": "region",  # a cloud's (Bedrock's, Vertex AI's); none for a provider's own API
    "api": "api",
    "hour": "strftime('%Y-%m-%dT%H:00Z', started_at)",
    "session": "session_id",
    # Claude subscription-style 5-hour windows (`five_hour_blocks`), by the start of each.
    "block": "sluice_block(started_at)",
}
# `started_at` is ISO 8601 text in UTC on both engines: its day and hour are its first 10 and 13 characters.
_POSTGRES_GROUP_BY = {
    "day": "substr(started_at, 1, 10)",
    "hour": "substr(started_at, 1, 13) || ':00Z'",
    "block": "(select label from _sluice_blocks where _sluice_blocks.started_at = calls.started_at)",
}
DEFAULT_GROUP_BY = ("day", "model")
# Dimensions whose rows also say when their first and last calls started.
SPAN_DIMENSIONS = ("session", "block")
BLOCK_LENGTH = timedelta(hours=5)
_BLOCK = "sluice_block"

# The measures of a usage row, in the order reports show them.
USAGE_COLUMNS = (
    "calls",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_calls",
    "errors",
)

_DECIMAL_SUM = "sluice_decimal_sum"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def cost_text(amount: str, row: UsageRow) -> str:
    """A group's cost as shown to a person: `unpriced` when none of its calls has a price (never "$0"), the
    amount and `+ N unpriced` when some lack one."""
    if not row.unpriced_calls:
        return amount
    if row.cost_usd == 0:
        return "unpriced"
    return f"{amount} + {row.unpriced_calls:,} unpriced"


@dataclass(frozen=True)
class UsageRow:
    """Usage of one group of calls; `group` maps each grouping dimension to its value (None when unset).

    `unpriced_calls` counts calls that succeeded but have no cost recorded (a model genai-prices does not
    know; count_tokens calls are never billed), apart from `errors`: calls that failed (rules/call_outcome.py:
    an error recorded, an HTTP status of 400 or more, or no answer; they have no cost either, and are not
    called unpriced).
    """

    group: dict[str, str | None]
    calls: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    unpriced_calls: int = 0
    errors: int = 0
    first_call_at: str | None = None  # ISO start of the group's first and last calls
    last_call_at: str | None = None

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def has_span(self) -> bool:
        return any(name in self.group for name in SPAN_DIMENSIONS)

    def to_dict(self) -> dict[str, Any]:
        """Group values then measures, JSON-ready: integers for tokens, a float for the cost. Grouped by
        session or block, also when the group's first and last calls started."""
        record: dict[str, Any] = dict(self.group)
        if self.has_span:
            record["first_call_at"] = self.first_call_at
            record["last_call_at"] = self.last_call_at
        for column in USAGE_COLUMNS:
            value = getattr(self, column)
            record[column] = float(value) if isinstance(value, Decimal) else value
        return record


@dataclass(frozen=True)
class UsageReport:
    group_by: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    rows: tuple[UsageRow, ...]
    total: UsageRow


@dataclass(frozen=True)
class RateLimitObservation:
    """The latest value of every rate-limit header seen for one (host, credential), each with its own time."""

    host: str
    credential: str
    headers: dict[str, str]
    seen_at: dict[str, datetime]
    observed_at: datetime
    call_id: str | None


@dataclass(frozen=True)
class CredentialQuota:
    host: str
    credential: str
    call_id: str | None
    summary: QuotaSummary

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "credential": self.credential, "call_id": self.call_id} | (
            self.summary.to_dict()
        )


def parse_group_by(text: str) -> tuple[str, ...]:
    """`day,model` → ("day", "model"); unknown or missing dimensions raise ValueError."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in GROUP_BY_COLUMNS]
    if unknown or not names:
        raise ValueError(
            f"cannot group by {', '.join(unknown) or 'nothing'}: choose from {', '.join(GROUP_BY_COLUMNS)}"
        )
    return names


def parse_time(text: str, now: datetime, *, end_of_day: bool = False) -> datetime:
    """A time bound as an aware UTC datetime. Raises ValueError.

    - a duration back from `now`: `7d`, `24h`, `30m`, `1h30m`;
    - an ISO date, `2026-11-20`: that midnight UTC, or the next one with `end_of_day` (so that an `--until`
      date includes its whole day);
    - an ISO datetime, `2026-11-20T10:00`: taken as UTC unless it carries an offset.
    """
    value = text.strip()
    try:
        return now.astimezone(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as e:
        # Say what is wrong with something that looks like a date (`2026-13-01`: month must be in 1..12).
        detail = f" ({e})" if value[:4].isdigit() and not value.isdigit() else ""
        raise ValueError(
            f"not a time: {text!r}{detail}: expected 7d, 24h, 30m, a date like 2026-11-20 or an ISO datetime"
        ) from None
    if _DATE.fullmatch(value) and end_of_day:
        moment += timedelta(days=1)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def count_calls(db: Database) -> int:
    row = db.execute("select count(*) from calls").fetchone()
    return int(row[0]) if row else 0


def usage(
    db: Database,
    *,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    since: datetime | None = None,
    until: datetime | None = None,
) -> UsageReport:
    """Usage of the calls started in [since, until), grouped and ordered by `group_by`, with a total.

    `started_at` is compared as text against the bound written the same way (ISO 8601 in UTC), which keeps
    the index on `started_at` usable.
    """
    dimensions = parse_group_by(",".join(group_by))
    columns = GROUP_BY_COLUMNS
    if isinstance(db, PgDatabase):
        columns = {**GROUP_BY_COLUMNS, **_POSTGRES_GROUP_BY}
        # The exact decimal sum of the costs as stored (the shortest text of each double, as Python's repr).
        cost_sum = "coalesce(sum(cost_usd::text::numeric), 0)::text"
    else:
        _register_decimal_sum(db)
        cost_sum = f"{_DECIMAL_SUM}(cost_usd)"
    if "block" in dimensions:
        _register_blocks(db)
    keys = ", ".join(f'{columns[name]} as "{name}"' for name in dimensions)
    positions = ", ".join(str(n) for n in range(1, len(dimensions) + 1))
    # Groups with no value (NULL) first, as SQLite orders them, on both engines.
    order = ", ".join(f"{n} nulls first" for n in range(1, len(dimensions) + 1))
    if "session" in dimensions:
        # Sessions in the order they began, not by their random ids.
        order = f"min(min(started_at)) over (partition by session_id), {order}"
    where, params = _time_filter(since, until)
    sql = f"""
        select {keys},
            min(started_at) as first_call_at,
            max(started_at) as last_call_at,
            count(*) as calls,
            sum(coalesce(input_tokens, 0)) as input_tokens,
            sum(coalesce(cache_read_tokens, 0)) as cache_read_tokens,
            sum(coalesce(cache_write_5m_tokens, 0)) as cache_write_5m_tokens,
            sum(coalesce(cache_write_1h_tokens, 0)) as cache_write_1h_tokens,
            sum(coalesce(output_tokens, 0)) as output_tokens,
            sum(coalesce(reasoning_tokens, 0)) as reasoning_tokens,
            {cost_sum} as cost_usd,
            sum(case when cost_usd is null and coalesce(api, '') != 'count_tokens' and not {ERROR_SQL}
                then 1 else 0 end) as unpriced_calls,
            sum(case when {ERROR_SQL} then 1 else 0 end) as errors
        from calls
        {where}
        group by {positions}
        order by {order}
    """
    rows = tuple(_usage_row(record, dimensions) for record in db.query(sql, params))
    return UsageReport(
        group_by=dimensions,
        since=since,
        until=until,
        rows=rows,
        total=total_of(rows),
    )


def total_of(rows: Iterable[UsageRow]) -> UsageRow:
    """The sum of usage rows, with an empty group."""
    total = UsageRow(group={})
    for row in rows:
        total = replace(
            total,
            **{
                column: getattr(total, column) + getattr(row, column)
                for column in USAGE_COLUMNS
                if column != "cache_write_tokens"
            },
        )
    return total


def rate_limit_observations(
    db: Database,
    *,
    host: str | None = None,
    credential: str | None = None,
) -> list[RateLimitObservation]:
    """The `rate_limits` table gathered per (host, credential), ordered by host then credential.

    A row whose `observed_at` is not an ISO datetime cannot be placed in time and is left out.
    """
    clauses, params = [], []
    if host is not None:
        clauses.append("host = ?")
        params.append(host)
    if credential is not None:
        clauses.append("credential = ?")
        params.append(credential)
    where = f"where {' and '.join(clauses)}" if clauses else ""
    sql = f"""
        select host, credential, header, value, observed_at, call_id from rate_limits {where}
        order by host, credential, header
    """
    # Header names compare case-insensitively (RFC 9110 §5.1); of two spellings, the newer value wins.
    grouped: dict[tuple[str, str], dict[str, tuple[str, datetime, str | None]]] = {}
    for row in db.query(sql, params):
        seen = _parse_stored_time(row["observed_at"])
        if seen is None:
            continue
        headers = grouped.setdefault((row["host"], row["credential"]), {})
        name = row["header"].lower()
        if name not in headers or headers[name][1] <= seen:
            headers[name] = (row["value"], seen, row["call_id"])
    observations = []
    for (row_host, row_credential), headers in grouped.items():
        _, latest, call_id = max(headers.values(), key=lambda entry: entry[1])
        observations.append(
            RateLimitObservation(
                host=row_host,
                credential=row_credential,
                headers={name: value for name, (value, _, _) in headers.items()},
                seen_at={name: seen for name, (_, seen, _) in headers.items()},
                observed_at=latest,
                call_id=call_id,
            )
        )
    return observations


def quota(
    db: Database,
    *,
    host: str | None = None,
    credential: str | None = None,
) -> list[CredentialQuota]:
    """The latest rate-limit state of each upstream credential, normalized by `state.ratelimits.summarize`."""
    return [
        CredentialQuota(
            host=observation.host,
            credential=observation.credential,
            call_id=observation.call_id,
            summary=summarize(observation.headers, observation.observed_at, seen_at=observation.seen_at),
        )
        for observation in rate_limit_observations(db, host=host, credential=credential)
    ]


def _time_filter(since: datetime | None, until: datetime | None) -> tuple[str, list[str]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(since.astimezone(UTC).isoformat())
    if until is not None:
        clauses.append("started_at < ?")
        params.append(until.astimezone(UTC).isoformat())
    return (f"where {' and '.join(clauses)}" if clauses else ""), params


def _usage_row(record: dict[str, Any], dimensions: tuple[str, ...]) -> UsageRow:
    group = {name: None if record[name] is None else str(record[name]) for name in dimensions}
    counts = {
        column: int(record[column] or 0)
        for column in USAGE_COLUMNS
        if column not in ("cost_usd", "cache_write_tokens")
    }
    return UsageRow(
        group=group,
        cost_usd=Decimal(record["cost_usd"] or 0),
        first_call_at=record["first_call_at"],
        last_call_at=record["last_call_at"],
        **counts,
    )


def five_hour_blocks(starts: Iterable[datetime]) -> list[datetime]:
    """The start of the 5-hour block of each call time (given in ascending order), as ccusage counts them.

    A block starts at the hour (UTC) of the first call after a gap, and holds every call that starts within
    BLOCK_LENGTH of that; the first call after that opens the next block (so does any call more than
    BLOCK_LENGTH after the previous one). This mirrors how Claude's subscription limits open a 5-hour window
    with the first message sent after the last window ran out.
    """
    blocks: list[datetime] = []
    current: datetime | None = None
    previous: datetime | None = None
    for moment in starts:
        moment = moment.astimezone(UTC)
        if (
            current is None
            or moment - current >= BLOCK_LENGTH
            or (previous is not None and moment - previous >= BLOCK_LENGTH)
        ):
            current = moment.replace(minute=0, second=0, microsecond=0)
        blocks.append(current)
        previous = moment
    return blocks


def block_label(start: datetime) -> str:
    return start.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _register_blocks(db: Database) -> None:
    """The block of each call, computed over every call in the database (a block's start does not depend on
    the --since/--until window): SQLite's `sluice_block(started_at)` function, or on PostgreSQL a temporary
    table `_sluice_blocks` (started_at, label) for this connection."""
    texts = [row[0] for row in db.execute("select distinct started_at from calls order by started_at")]
    timed = [(text, moment) for text in texts if (moment := _parse_stored_time(text)) is not None]
    timed.sort(key=lambda pair: pair[1])
    labels = {
        text: block_label(start)
        for (text, _), start in zip(timed, five_hour_blocks(m for _, m in timed), strict=True)
    }
    if isinstance(db, PgDatabase):
        db.conn.raw.execute(
            "create temporary table if not exists _sluice_blocks (started_at text primary key, label text)"
        )
        db.conn.raw.execute("truncate _sluice_blocks")
        with db.conn.raw.cursor() as cursor, cursor.copy("copy _sluice_blocks from stdin") as copy:
            for item in labels.items():
                copy.write_row(item)
        return
    db.conn.create_function(_BLOCK, 1, labels.get, deterministic=True)


class _DecimalSum:
    """SQLite aggregate: the decimal sum of REAL values as written (0.1 + 0.2 is 0.3), returned as text."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: object) -> None:
        if value is None:
            return
        try:
            amount = Decimal(repr(value) if isinstance(value, float) else str(value))
        except InvalidOperation:
            return  # not a number: such a row has no usable cost
        if amount.is_finite():
            self.total += amount

    def finalize(self) -> str:
        return str(self.total)


def _register_decimal_sum(db: sqlite_utils.Database) -> None:
    # typeshed's aggregate protocol says `finalize` returns int; SQLite takes any value it can store.
    db.conn.create_aggregate(_DECIMAL_SUM, 1, _DecimalSum)  # type: ignore[arg-type]


def _parse_stored_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
