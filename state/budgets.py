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
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlite_utils

from state.store.sqlite import immediate

Period = str  # "day" | "week" | "month" | "total"

HOLD_TTL_S = 6 * 3600.0

# Run by the writer thread inside its batch transaction: (state, amount_usd, settled_at, id).
SETTLE_SQL = """
update budget_holds set state = ?, amount_usd = ?, settled_at = ?
where id = ? and state = 'held'
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

    def refusal(self) -> str:
        """The message a refused client reads: which budget, how much is used, when it resets."""
        resets = f"; it resets at {self.resets_at.isoformat()}" if self.resets_at else "; it does not reset"
        scope = "in total" if self.period == "total" else f"per {self.period}"
        whose = f"client {self.client}" if self.team is None else f"team {self.team} (client {self.client})"
        return (
            f"sluice: budget exhausted for {whose}: {budget_usd(self.limit_usd)} {scope}, "
            f"${self.spent_usd:.4f} spent and ${self.reserved_usd:.4f} reserved by calls in flight, "
            f"this call needs up to ${self.estimate_usd:.4f}{resets}"
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


class BudgetLedger:
    """Budgets over the main database. Give it its own connection; methods are blocking (use a thread)."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        *,
        clock: Callable[[], float] = time.time,
        hold_ttl_s: float = HOLD_TTL_S,
    ) -> None:
        self._conn = db.conn
        self._clock = clock
        self._hold_ttl_s = hold_ttl_s
        # One connection serves every worker thread; its transactions must not interleave.
        self._lock = threading.Lock()

    def sync_budgets(
        self,
        budgets: Mapping[str, tuple[float, Period]],
        teams: Mapping[str, tuple[float, Period, Sequence[str]]] | None = None,
    ) -> None:
        """Record the configured budgets (client → (usd, period); team → (usd, period, members)) so reports
        can show them."""
        now = self._clock()
        with self._lock, immediate(self._conn):
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
        with self._lock, immediate(self._conn):
            self._expire_stale(now)
            found: list[Admission] = []
            if limit_usd is not None:
                spent, reserved = self._sums(client, key)
                _, resets_at = period_bounds(period, moment)
                fits = spent + reserved + estimate_usd <= limit_usd + 1e-12
                found.append(
                    Admission(fits, client, limit_usd, period, spent, reserved, estimate_usd, resets_at)
                )
            if team is not None and team_key is not None:
                spent, reserved = self._team_sums(team.team, team_key)
                _, resets_at = period_bounds(team.period, moment)
                fits = spent + reserved + estimate_usd <= team.usd + 1e-12
                found.append(
                    Admission(
                        fits,
                        client,
                        team.usd,
                        team.period,
                        spent,
                        reserved,
                        estimate_usd,
                        resets_at,
                        team.team,
                    )
                )
            refused = next((admission for admission in found if not admission.admitted), None)
            hold, capped = estimate_usd, False
            left = min(a.limit_usd - a.spent_usd - a.reserved_usd for a in found)
            if refused is not None and minimum_usd is not None and left >= minimum_usd > 0:
                refused, hold, capped = None, left, True
            if refused is None:
                self._conn.execute(
                    """
                    insert or ignore into budget_holds
                        (id, client, period_key, team, team_period_key, amount_usd, estimate_usd, state,
                         created_at)
                    values (?, ?, ?, ?, ?, ?, ?, 'held', ?)
                    """,
                    (
                        call_id,
                        client,
                        key,
                        team.team if team is not None else None,
                        team_key,
                        hold,
                        estimate_usd,
                        now,
                    ),
                )
                return replace(found[0], admitted=True, hold_usd=hold, capped=capped)
        return refused

    def refund(self, call_id: str) -> None:
        """Release a hold now (the call never reached the provider)."""
        with self._lock, immediate(self._conn):
            self._conn.execute(SETTLE_SQL, ("refunded", 0.0, self._clock(), call_id))

    def status(self) -> list[ClientBudget]:
        """Each budgeted client's spend and reservations in its current period."""
        now = self._clock()
        moment = datetime.fromtimestamp(now, UTC)
        result = []
        with self._lock, immediate(self._conn):
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
        with self._lock, immediate(self._conn):
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
        self._conn.execute(
            "update budget_holds set state = 'expired', settled_at = ? "
            "where state = 'held' and created_at < ?",
            (now, now - self._hold_ttl_s),
        )
