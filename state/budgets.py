"""Budgets of clients and teams: reserve an estimate before a call, settle to the actual cost, refund on
failure.

Every admitted call holds a row in `budget_holds`, which names its client and, when the client is in a team
with a budget, its team. Admission is one `BEGIN IMMEDIATE` transaction that sums the settled and held
amounts of the client's budget and of its team's, each for its own current period, and inserts the new hold
only if `spent + reserved + estimate <= limit` holds for both — so concurrent requests, in one process or
several sharing the database, can never together pass a check that only one of them could. Settlement is
done by the writer thread in the same transaction that writes the call's row (`settle_sql`), so a call's
cost is never missing from both the holds and the calls table.

Periods are calendar periods in UTC: `day` (midnight UTC), `week` (Monday 00:00 UTC), `month` (the 1st),
`total` (never resets). A hold belongs to the period it was admitted in; it does not move. A hold left
behind by a crashed process expires after `hold_ttl_s` and stops counting.

On PostgreSQL (proxies on many machines) the admission is one transaction holding an advisory lock per
budget it checks (`budget:client:<name>`, `budget:team:<name>`, taken in sorted order, so a member's
admission and its team's never wait on each other in a cycle): admissions of the same budget are
serialized across every proxy, those of unrelated budgets run side by side.

The database going away (PostgreSQL restarted or unreachable) is a fault, not an outage. Each admission
remembers what it read of each budget (spent, reserved, and how many proxies were alive); while the database
is away, a proxy admits a call only if its share of what was left when it last read the budget (what was
left divided among the proxies then alive) still covers the call's estimate after the holds it admitted
since; otherwise it refuses with the budget's 429, saying the database is away. It says so loudly once, and
once when the database is back, where the holds it admitted meanwhile are written before anything else is
decided. So the fleet never spends more than a budget, except by the holds other proxies placed after this
one last read it (the calls in flight it could not see), besides what any call may cost beyond its
estimate. A budget this proxy never read is refused with 503 (`BudgetUnknown`). SQLite has no such mode:
its file does not go away under a running proxy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from state.store import Database
from state.store.postgres import PgDatabase
from state.store.postgres import immediate as pg_immediate
from state.store.sqlite import immediate

log = logging.getLogger("sluice")

Period = str  # "day" | "week" | "month" | "total"

HOLD_TTL_S = 6 * 3600.0

# How long a proxy that lost the database decides from memory before it tries to reach it again.
RECONNECT_S = 2.0
# A proxy not seen for this long is not counted among those sharing what is left while the database is away.
PROXY_STALE_S = 45.0

# Run by the writer thread inside its batch transaction: (state, amount_usd, settled_at, id). A hold still
# held becomes settled (or refunded); one already settled stays as it is. A settlement that finds no hold
# (admitted while the database was away, and written by the writer before the proxy wrote the hold) is kept
# as a row of nobody's, which the hold then fills in (`_HOLD_SQL`): either order gives the same row.
SETTLE_SQL = """
insert into budget_holds (state, amount_usd, settled_at, id, client, period_key, created_at)
values (?, ?, ?, ?, '', '', 0)
on conflict (id) do update set
    state = excluded.state, amount_usd = excluded.amount_usd, settled_at = excluded.settled_at
where budget_holds.state = 'held'
"""

# A new hold: (id, client, period_key, team, team_period_key, amount_usd, estimate_usd, created_at). Never
# replaces a hold; completes a settlement that came first (above).
_HOLD_SQL = """
insert into budget_holds
    (id, client, period_key, team, team_period_key, amount_usd, estimate_usd, state, created_at)
values (?, ?, ?, ?, ?, ?, ?, 'held', ?)
on conflict (id) do update set
    client = excluded.client, period_key = excluded.period_key, team = excluded.team,
    team_period_key = excluded.team_period_key, estimate_usd = excluded.estimate_usd,
    created_at = excluded.created_at
where budget_holds.client = ''
"""


def period_bounds(period: Period, now: datetime) -> tuple[datetime | None, datetime | None]:
    """Start and end (exclusive) of the period containing `now`; (None, None) for `total`."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following
    if period == "total":
        return None, None
    raise ValueError(f"unknown budget period {period!r}")


def period_key(period: Period, now: datetime) -> str:
    start, _ = period_bounds(period, now)
    return f"{period}:{start.date().isoformat() if start else 'all'}"


@dataclass(frozen=True, slots=True)
class TeamBudget:
    """A team's budget, which each member's calls count against on top of the member's own."""

    team: str
    usd: float
    period: Period


@dataclass(frozen=True, slots=True)
class Admission:
    """What the admission found; when refused, of the budget that refused (the client's or its team's:
    `team` names the team then)."""

    admitted: bool
    client: str
    limit_usd: float
    period: Period
    spent_usd: float
    reserved_usd: float
    estimate_usd: float
    resets_at: datetime | None
    team: str | None = None
    # What is held for the call when admitted: its estimate, or (`capped`) only what was left, which its
    # stream may then spend and no more.
    hold_usd: float = 0.0
    capped: bool = False
    # Decided from memory while the database was away: how (appended to the refusal), and what this proxy
    # may still hold of the budget (its share of what was left, less what it admitted since).
    away: str | None = None
    away_left_usd: float | None = None

    def left_usd(self) -> float:
        """What this admission may still hold of its budget."""
        if self.away_left_usd is not None:
            return self.away_left_usd
        return self.limit_usd - self.spent_usd - self.reserved_usd

    def refusal(self) -> str:
        """The message a refused client reads: which budget, how much is used, when it resets."""
        resets = f"; it resets at {self.resets_at.isoformat()}" if self.resets_at else "; it does not reset"
        scope = "in total" if self.period == "total" else f"per {self.period}"
        whose = f"client {self.client}" if self.team is None else f"team {self.team} (client {self.client})"
        return (
            f"sluice: budget exhausted for {whose}: {budget_usd(self.limit_usd)} {scope}, "
            f"${self.spent_usd:.4f} spent and ${self.reserved_usd:.4f} reserved by calls in flight, "
            f"this call needs up to ${self.estimate_usd:.4f}{resets}"
            + (f" ({self.away})" if self.away else "")
        )

    @property
    def limit(self) -> str:
        """Which limit refused, for the row: `budget` (the client's) or `team budget`."""
        return "budget" if self.team is None else "team budget"


def budget_usd(value: float) -> str:
    """A configured amount with cents, and with every further digit it has: $20.00, $0.0001 (never $0.00)."""
    exact = Decimal(repr(value))
    exponent = exact.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"${exact:,.{places}f}"


@dataclass(frozen=True, slots=True)
class ClientBudget:
    client: str
    limit_usd: float
    period: Period
    spent_usd: float
    reserved_usd: float
    resets_at: datetime | None

    def to_dict(self) -> dict[str, object]:
        return {"client": self.client, **_spend_fields(self)}


@dataclass(frozen=True, slots=True)
class TeamSpend:
    team: str
    members: tuple[str, ...]
    limit_usd: float
    period: Period
    spent_usd: float
    reserved_usd: float
    resets_at: datetime | None

    def to_dict(self) -> dict[str, object]:
        return {"team": self.team, "members": list(self.members), **_spend_fields(self)}


def _spend_fields(budget: ClientBudget | TeamSpend) -> dict[str, object]:
    """A budget's limit, period, spend, reservations, what is left and its reset, as JSON shows them."""
    return {
        "limit_usd": budget.limit_usd,
        "period": budget.period,
        "spent_usd": budget.spent_usd,
        "reserved_usd": budget.reserved_usd,
        "remaining_usd": max(0.0, budget.limit_usd - budget.spent_usd - budget.reserved_usd),
        "resets_at": budget.resets_at.isoformat() if budget.resets_at else None,
    }


class BudgetUnknown(RuntimeError):
    """The database is away and this proxy never read the budget a call needs: it cannot be admitted."""


@dataclass(frozen=True, slots=True)
class _Known:
    """What an admission last read of one budget: its period, spent and reserved, the proxies alive."""

    key: str
    spent: float
    reserved: float
    proxies: int
    at: float


@dataclass(frozen=True, slots=True)
class _AwayHold:
    """A hold admitted while the database was away, written when it is back."""

    client: str
    key: str
    team: str | None
    team_key: str | None
    amount: float
    estimate: float
    created_at: float

    def row(self, call_id: str) -> tuple[object, ...]:
        return (
            call_id,
            self.client,
            self.key,
            self.team,
            self.team_key,
            self.amount,
            self.estimate,
            self.created_at,
        )


@dataclass(frozen=True, slots=True)
class _Asked:
    """One call's admission: its hold, and the budgets (the client's, its team's) it counts against."""

    call_id: str
    hold: _AwayHold
    limit_usd: float | None
    period: Period
    team: TeamBudget | None
    minimum_usd: float | None
    moment: datetime


class BudgetLedger:
    """Budgets over the main database. Give it its own connection; methods are blocking (use a thread).

    With `connect` (the store's), a PostgreSQL connection lost is opened again once the server answers;
    meanwhile admissions decide from what was last known (the module's docstring). `owner` names this proxy
    among those sharing what is left (proxy_instances)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        hold_ttl_s: float = HOLD_TTL_S,
        connect: Callable[[], Database] | None = None,
        owner: str | None = None,
    ) -> None:
        self._db = db
        self._postgres = isinstance(db, PgDatabase)
        self._connect = connect
        self._owner = owner
        self._clock = clock
        self._hold_ttl_s = hold_ttl_s
        # One connection serves every worker thread; its transactions must not interleave.
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], _Known] = {}
        self._away: dict[str, _AwayHold] = {}
        self._away_since: float | None = None
        self._retry_at = 0.0

    @property
    def _conn(self) -> Any:
        return self._db.conn

    def sync_budgets(
        self,
        budgets: Mapping[str, tuple[float, Period]],
        teams: Mapping[str, tuple[float, Period, Sequence[str]]] | None = None,
    ) -> None:
        """Record the configured budgets (client → (usd, period); team → (usd, period, members)) so reports
        can show them."""
        now = self._clock()
        with self._lock, self._transaction(["budget:config"]):
            self._conn.execute("delete from budgets")
            self._conn.executemany(
                "insert into budgets (client, usd, period, updated_at) values (?, ?, ?, ?)",
                [(client, usd, period, now) for client, (usd, period) in budgets.items()],
            )
            self._conn.execute("delete from team_budgets")
            self._conn.executemany(
                "insert into team_budgets (team, usd, period, members, updated_at) values (?, ?, ?, ?, ?)",
                [
                    (team, usd, period, json.dumps(list(members)), now)
                    for team, (usd, period, members) in (teams or {}).items()
                ],
            )

    def admit(
        self,
        call_id: str,
        client: str,
        estimate_usd: float,
        limit_usd: float | None,
        period: Period,
        *,
        team: TeamBudget | None = None,
        minimum_usd: float | None = None,
    ) -> Admission:
        """Reserve `estimate_usd` for this call if the client's budget (`limit_usd` per `period`; None when
        the client has none of its own) and its team's allow it; one immediate transaction.

        With `minimum_usd` (a budget enforced mid-stream), a call whose estimate does not fit is still
        admitted when at least that much is left in every budget: it holds what is left (the least of
        them), `capped`.

        On PostgreSQL, while the database is away, decided from what was last known (the module's
        docstring); raises BudgetUnknown for a budget this proxy never read.

        Raises ValueError for an estimate that is not a positive finite amount: a hold of nothing (or NaN,
        which every comparison passes) would let the call through for free.
        """
        if not (math.isfinite(estimate_usd) and estimate_usd > 0):
            raise ValueError(f"a budget hold must be a positive amount, not {estimate_usd!r}")
        if limit_usd is None and team is None:
            raise ValueError("a hold needs a budget: the client's or its team's")
        now = self._clock()
        moment = datetime.fromtimestamp(now, UTC)
        key = period_key(period, moment) if limit_usd is not None else ""
        team_key = period_key(team.period, moment) if team is not None else None
        hold = _AwayHold(client, key, team.team if team else None, team_key, estimate_usd, estimate_usd, now)
        asked = _Asked(call_id, hold, limit_usd, period, team, minimum_usd, moment)
        with self._lock:
            if self._reachable(now):
                try:
                    return self._admit_stored(asked)
                except psycopg.Error as e:
                    self._lost(e, now)
            return self._admit_away(asked)

    def _admit_stored(self, asked: _Asked) -> Admission:
        hold, team, now = asked.hold, asked.team, asked.hold.created_at
        locks = [f"budget:client:{hold.client}"] if asked.limit_usd is not None else []
        locks += [f"budget:team:{team.team}"] if team is not None else []
        with self._transaction(locks):
            self._expire_stale(now)
            proxies = self._proxies(now)
            found: list[Admission] = []
            if asked.limit_usd is not None:
                spent, reserved = self._sums(hold.client, hold.key)
                self._known[("client", hold.client)] = _Known(hold.key, spent, reserved, proxies, now)
                found.append(_found(hold, asked.limit_usd, asked.period, spent, reserved, asked.moment))
            if team is not None and hold.team_key is not None:
                spent, reserved = self._team_sums(team.team, hold.team_key)
                self._known[("team", team.team)] = _Known(hold.team_key, spent, reserved, proxies, now)
                found.append(_found(hold, team.usd, team.period, spent, reserved, asked.moment, team.team))
            admission = _decide(found, hold.estimate, asked.minimum_usd)
            if admission.admitted:
                self._conn.execute(_HOLD_SQL, replace(hold, amount=admission.hold_usd).row(asked.call_id))
                self._remember_hold(hold, admission.hold_usd, asked.limit_usd is not None, team is not None)
            return admission

    def _admit_away(self, asked: _Asked) -> Admission:
        """The admission while the database is away: from what was last read, this proxy's share of it."""
        hold, team = asked.hold, asked.team
        found: list[Admission] = []
        if asked.limit_usd is not None:
            found.append(
                self._from_memory(
                    hold, "client", hold.client, hold.key, asked.limit_usd, asked.period, asked.moment
                )
            )
        if team is not None and hold.team_key is not None:
            found.append(
                self._from_memory(hold, "team", team.team, hold.team_key, team.usd, team.period, asked.moment)
            )
        admission = _decide(found, hold.estimate, asked.minimum_usd)
        if admission.admitted:
            self._away[asked.call_id] = replace(hold, amount=admission.hold_usd)
        return admission

    def _from_memory(
        self,
        hold: _AwayHold,
        kind: str,
        name: str,
        key: str,
        limit: float,
        period: Period,
        moment: datetime,
    ) -> Admission:
        known = self._known.get((kind, name))
        if known is None:
            raise BudgetUnknown(
                f"sluice: budget of {kind} {name}: the database is away and this proxy has not read the "
                "budget since it started, so it cannot tell what is left; retry when the database is back"
            )
        spent, reserved = (known.spent, known.reserved) if known.key == key else (0.0, 0.0)
        column = "client" if kind == "client" else "team"
        mine = sum(
            held.amount
            for held in self._away.values()
            if getattr(held, column) == name and (held.key if kind == "client" else held.team_key) == key
        )
        share = (limit - spent - reserved) / max(1, known.proxies)
        ago = hold.created_at - known.at
        away = (
            f"the database is away: decided from what this proxy read {ago:.0f} s ago, its share "
            f"(1/{max(1, known.proxies)}) of what was left, less ${mine:.4f} it admitted since"
        )
        found = _found(hold, limit, period, spent, reserved + mine, moment, name if kind == "team" else None)
        left = share - mine
        return replace(found, admitted=hold.estimate <= left + 1e-12, away=away, away_left_usd=left)

    def _remember_hold(self, hold: _AwayHold, amount: float, own: bool, team: bool) -> None:
        """Count a hold just written in what this proxy knows of its budgets."""
        for kind, name, wanted in (("client", hold.client, own), ("team", hold.team, team)):
            known = self._known.get((kind, name or ""))
            if wanted and known is not None:
                self._known[(kind, name or "")] = replace(known, reserved=known.reserved + amount)

    def refund(self, call_id: str) -> None:
        """Release a hold now (the call never reached the provider)."""
        with self._lock:
            if self._away.pop(call_id, None) is not None:
                return
            with self._transaction(["budget:settle"]):
                self._conn.execute(SETTLE_SQL, ("refunded", 0.0, self._clock(), call_id))

    def refresh(
        self, budgets: Mapping[str, tuple[float, Period]], teams: Mapping[str, TeamBudget] | None = None
    ) -> None:
        """Read each configured budget now, so an admission while the database is away decides from what
        is recent (and write back the holds admitted while it was away, if it is back). Say this proxy is
        alive. Run at start-up and on the heartbeat; nothing to do on SQLite."""
        if not self._postgres:
            return
        now = self._clock()
        moment = datetime.fromtimestamp(now, UTC)
        with self._lock:
            if not self._reachable(now):
                return
            try:
                with self._transaction(["budget:status"]):
                    proxies = self._proxies(now)
                    for client, (_, period) in budgets.items():
                        key = period_key(period, moment)
                        self._known[("client", client)] = _Known(key, *self._sums(client, key), proxies, now)
                    for team in (teams or {}).values():
                        key = period_key(team.period, moment)
                        self._known[("team", team.team)] = _Known(
                            key, *self._team_sums(team.team, key), proxies, now
                        )
            except psycopg.Error as e:
                self._lost(e, now)

    def write_back(self) -> bool:
        """At shutdown: the holds admitted while the database was away, written now if it answers (without
        waiting out RECONNECT_S). False, logged as an error, when it is still away: their spend is then
        missing from the budgets (each call's row still has its cost)."""
        with self._lock:
            if not self._away:
                return True
            self._retry_at = 0.0
            if self._reachable(self._clock()):
                return True
            log.error(
                "sluice: budgets: %d holds admitted while the database was away could not be written before "
                "shutdown: their spend is not counted against the budgets",
                len(self._away),
            )
            return False

    @property
    def away(self) -> bool:
        """Whether the database is away (admissions decide from what was last known)."""
        return self._away_since is not None

    def status(self) -> list[ClientBudget]:
        """Each budgeted client's spend and reservations in its current period."""
        now = self._clock()
        moment = datetime.fromtimestamp(now, UTC)
        result = []
        with self._lock, self._transaction(["budget:status"]):
            rows = self._conn.execute("select client, usd, period from budgets order by client").fetchall()
            self._expire_stale(now)
            for client, usd, period in rows:
                spent, reserved = self._sums(client, period_key(period, moment))
                _, resets_at = period_bounds(period, moment)
                result.append(ClientBudget(client, float(usd), period, spent, reserved, resets_at))
        return result

    def team_status(self) -> list[TeamSpend]:
        """Each team budget's spend and reservations in its current period, with its members."""
        now = self._clock()
        moment = datetime.fromtimestamp(now, UTC)
        result = []
        with self._lock, self._transaction(["budget:status"]):
            rows = self._conn.execute(
                "select team, usd, period, members from team_budgets order by team"
            ).fetchall()
            self._expire_stale(now)
            for team, usd, period, members in rows:
                spent, reserved = self._team_sums(team, period_key(period, moment))
                _, resets_at = period_bounds(period, moment)
                result.append(
                    TeamSpend(
                        team, tuple(json.loads(members)), float(usd), period, spent, reserved, resets_at
                    )
                )
        return result

    # -- the database ------------------------------------------------------------------------------

    def _transaction(self, locks: Sequence[str]) -> AbstractContextManager[None]:
        return serialized(self._db, locks)

    def _reachable(self, now: float) -> bool:
        """Whether to ask the database: always, unless it was found away less than RECONNECT_S ago. Once
        it answers again, the holds admitted meanwhile are written first."""
        if self._away_since is None:
            return True
        if now < self._retry_at or self._connect is None:
            return False
        try:
            db = self._connect()
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = db
            if self._away:
                self._write_away()
        except psycopg.Error as e:
            self._retry_at = now + RECONNECT_S
            log.debug("sluice: budgets: the database is still away: %s", e)
            return False
        log.warning(
            "sluice: budgets: the database is back after %.0f s; the %d holds admitted meanwhile are written",
            now - self._away_since,
            len(self._away),
        )
        self._away.clear()
        self._away_since = None
        return True

    def _write_away(self) -> None:
        """Write the holds admitted while the database was away, under their budgets' locks."""
        holds = list(self._away.items())
        locks = [f"budget:client:{hold.client}" for _, hold in holds if hold.key]
        locks += [f"budget:team:{hold.team}" for _, hold in holds if hold.team]
        with self._transaction(locks):
            self._conn.executemany(_HOLD_SQL, [hold.row(call_id) for call_id, hold in holds])

    def _lost(self, error: psycopg.Error, now: float) -> None:
        """The database failed an admission: if the connection is gone, decide from memory until it is
        back (said once, loudly); any other failure (a statement cancelled, a constraint) is raised."""
        raw = getattr(self._db.conn, "raw", None)
        if raw is None or not (raw.broken or raw.closed):
            raise error
        self._away_since = now
        self._retry_at = now + RECONNECT_S
        log.warning(
            "sluice: budgets: the database is away (%s); admitting from what this proxy last read of each "
            "budget, its share of what was left, until it is back",
            str(error).strip() or type(error).__name__,
        )

    def _proxies(self, now: float) -> int:
        """Say this proxy is alive, and count the proxies alive (PostgreSQL: those that would share what is
        left while the database is away; one on SQLite)."""
        if not self._postgres or self._owner is None:
            return 1
        self._conn.execute(
            "insert into proxy_instances (id, seen_at) values (?, ?) "
            "on conflict (id) do update set seen_at = excluded.seen_at",
            (self._owner, now),
        )
        (count,) = self._conn.execute(
            "select count(*) from proxy_instances where seen_at > ?", (now - PROXY_STALE_S,)
        ).fetchone()
        return max(1, int(count))

    def _team_sums(self, team: str, key: str) -> tuple[float, float]:
        return self._sums(team, key, by="team")

    def _sums(self, name: str, key: str, by: str = "client") -> tuple[float, float]:
        """(settled, held) amounts of a client's budget (`by="client"`) or a team's in one period."""
        column, period = ("team", "team_period_key") if by == "team" else ("client", "period_key")
        spent, reserved = self._conn.execute(
            f"""
            select coalesce(sum(case when state = 'settled' then amount_usd end), 0),
                   coalesce(sum(case when state = 'held' then amount_usd end), 0)
            from budget_holds where {column} = ? and {period} = ?
            """,
            (name, key),
        ).fetchone()
        return float(spent), float(reserved)

    def _expire_stale(self, now: float) -> None:
        # On PostgreSQL, admissions of other budgets expire holds at the same time: each takes the rows no
        # other is expiring (SKIP LOCKED) rather than wait on them.
        skip = " for update skip locked" if self._postgres else ""
        self._conn.execute(
            "update budget_holds set state = 'expired', settled_at = ? where id in "
            f"(select id from budget_holds where state = 'held' and created_at < ?{skip})",
            (now, now - self._hold_ttl_s),
        )


def serialized(db: Database, locks: Sequence[str]) -> AbstractContextManager[None]:
    """A read-then-write transaction on `db`: SQLite's write lock on the whole file; on PostgreSQL, an
    advisory lock per name (each budget or rate scope the transaction checks), so only transactions that
    check the same thing wait on each other, across every proxy."""
    if isinstance(db, PgDatabase):
        return pg_immediate(db.conn, locks or None)
    return immediate(db.conn)


def _found(
    hold: _AwayHold,
    limit: float,
    period: Period,
    spent: float,
    reserved: float,
    moment: datetime,
    team: str | None = None,
) -> Admission:
    """What one budget says of the call: whether its estimate fits what is left."""
    _, resets_at = period_bounds(period, moment)
    fits = spent + reserved + hold.estimate <= limit + 1e-12
    return Admission(fits, hold.client, limit, period, spent, reserved, hold.estimate, resets_at, team)


def _decide(found: Sequence[Admission], estimate: float, minimum_usd: float | None) -> Admission:
    """The admission of a call by every budget it counts against: the first that refuses it, or admitted
    with its estimate held, or (`minimum_usd`, a stream metered as it flows) with only what is left."""
    refused = next((admission for admission in found if not admission.admitted), None)
    hold, capped = estimate, False
    left = min(admission.left_usd() for admission in found)
    if refused is not None and minimum_usd is not None and left >= minimum_usd > 0:
        refused, hold, capped = None, left, True
    if refused is not None:
        return refused
    return replace(found[0], admitted=True, hold_usd=hold, capped=capped)
