"""Rate limits of clients and teams: requests and tokens per minute, and calls at once, shared by every proxy
on one database.

Each admitted call of a limited client is a row in `rate_admissions`: its client, its team, when it was
admitted, its input and output tokens (estimated at admission: the input from the body, the output at the
request's ceiling, as Anthropic counts output tokens per minute; then settled to the usage the answer
reported, by the writer in the transaction that writes the call's row) and whether it is still open.
Admission is one `BEGIN IMMEDIATE` transaction per call (on PostgreSQL, one holding an advisory lock per
scope it checks, `rate:client:<name>` and `rate:team:<name>`, in sorted order) that counts, for the client
and for its team, the admissions of the last minute, their tokens, and the open ones, and inserts the new
one only when every limit still holds — so concurrent calls, in one process or several sharing the
database, never together pass a limit that only some of them could.

Fails closed: a call whose own tokens are more than a per-minute limit allows is refused (it could never
fit), and so is one whose output ceiling sluice could not read.

An open admission belongs to the proxy that admitted it (`owner`). Each proxy says it is alive in
`proxy_instances` (at each admission, and every `HEARTBEAT_S`); the open admissions of a proxy not seen for
`OWNER_STALE_S` (it crashed or was killed) stop counting as calls in flight.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import sqlite_utils

from state.budgets import serialized
from state.report import quota
from state.store import Database
from state.store.postgres import PgDatabase

WINDOW_S = 60.0
HEARTBEAT_S = 10.0
OWNER_STALE_S = 45.0
# An admission still open after this long no longer counts as a call in flight: no stream lasts it, and an
# admission whose row was never written (its flow gone while it was being admitted) must not hold a slot.
OPEN_TTL_S = 3600.0
# An old admission is of no use once out of every window; deleted as new ones come, a few at a time.
PRUNE_AFTER_S = 3600.0
PRUNE_BATCH = 500

# Run by the writer thread with the call's row: (input tokens, output tokens, ended_at, id). A count left
# NULL (no usage seen) keeps its estimate: the provider may have counted tokens nobody saw.
SETTLE_RATE_SQL = """
update rate_admissions set state = 'done', ended_at = ?,
    input_tokens = coalesce(?, input_tokens), output_tokens = coalesce(?, output_tokens)
where id = ? and state = 'open'
"""

# An admission in the window: (admitted at, input tokens, output tokens).
type _Event = tuple[float, int, int]

# What each limit is called in refusals and headers, and its unit.
LIMIT_WORDS = {
    "rpm": "requests per minute",
    "input_tpm": "input tokens per minute",
    "output_tpm": "output tokens per minute",
    "concurrent": "calls at once",
}


@dataclass(frozen=True, slots=True)
class RateScope:
    """The rate limits of one client or one team (`kind`), any of them None when not limited."""

    kind: str  # "client" | "team"
    name: str
    rpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    concurrent: int | None = None

    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.input_tpm, self.output_tpm, self.concurrent))


@dataclass(frozen=True, slots=True)
class RateRefusal:
    """Which limit refused a call, its value, what was used of it, and when the call may fit (None: never, or
    when a call in flight ends)."""

    kind: str
    name: str
    limit: str  # a key of LIMIT_WORDS
    value: int
    used: int
    retry_after_s: float | None
    never_fits: bool = False
    # Why the call cannot be counted against the limit at all (its size unknown), for a refusal that is not
    # about what it needs.
    uncounted: str | None = None

    def message(self) -> str:
        words = LIMIT_WORDS[self.limit]
        head = f"sluice: rate limit for {self.kind} {self.name}: {self.value:,} {words}"
        if self.uncounted is not None:
            return f"{head}; {self.uncounted}: it cannot be admitted"
        if self.never_fits:
            return f"{head}; this call alone needs {self.used:,}, more than the limit: it cannot be admitted"
        if self.limit == "concurrent":
            return f"{head}, {self.used:,} in flight; retry when one ends"
        wait = "" if self.retry_after_s is None else f"; room again in {math.ceil(self.retry_after_s)} s"
        return f"{head}, {self.used:,} used in the last minute{wait}"

    def note(self) -> str:
        """The row's note: `refused: rate limit (client alice: rpm 60, 60 used, retry in 12 s)`."""
        wait = "" if self.retry_after_s is None else f", retry in {math.ceil(self.retry_after_s)} s"
        if self.never_fits:
            wait = ", never fits"
        if self.uncounted is not None:
            wait = f", not countable: {self.uncounted}"
        scope = f"{self.kind} {self.name}"
        return f"refused: rate limit ({scope}: {self.limit} {self.value}, {self.used} used{wait})"


@dataclass(frozen=True, slots=True)
class RateUse:
    """What a scope has used of its limits now, for `sluice clients` / `sluice teams`."""

    kind: str
    name: str
    requests: int
    input_tokens: int
    output_tokens: int
    in_flight: int

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "requests_last_minute": self.requests,
            "input_tokens_last_minute": self.input_tokens,
            "output_tokens_last_minute": self.output_tokens,
            "in_flight": self.in_flight,
        }


def new_owner() -> str:
    """An id for this proxy process: its host, its pid, and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RateLedger:
    """Rate admissions over the main database. Give it its own connection; methods block (use a thread)."""

    def __init__(
        self,
        db: Database,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
        owner_stale_s: float = OWNER_STALE_S,
        connect: Callable[[], Database] | None = None,
    ) -> None:
        self._db = db
        self._connect = connect
        self._postgres = isinstance(db, PgDatabase)
        self.owner = owner or new_owner()
        self._clock = clock
        self._window_s = window_s
        self._owner_stale_s = owner_stale_s
        self._lock = threading.Lock()

    @property
    def _conn(self) -> Any:
        return self._database.conn

    @property
    def _database(self) -> Database:
        """The connection, opened again (with `connect`) when PostgreSQL dropped it. While the database is
        away this raises, and the call is refused by sluice (fails closed, addons/chain.py): a limit shared
        by the fleet cannot be counted without it."""
        raw = getattr(self._db.conn, "raw", None)
        if raw is not None and (raw.broken or raw.closed) and self._connect is not None:
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = self._connect()
        return self._db

    def heartbeat(self) -> None:
        """Say this proxy is alive, so the calls it holds open keep counting."""
        with self._lock, serialized(self._database, [f"rate:owner:{self.owner}"]):
            self._seen(self._clock())

    def admit(
        self,
        call_id: str,
        client: str,
        team: str | None,
        input_tokens: int,
        output_tokens: int,
        scopes: Sequence[RateScope],
    ) -> RateRefusal | None:
        """Admit the call if every scope's limits allow it (and record it); else the first limit that
        refuses it. One immediate transaction."""
        now = self._clock()
        locks = [f"rate:{scope.kind}:{scope.name}" for scope in scopes]
        with self._lock, serialized(self._database, locks):
            self._seen(now)
            for scope in scopes:
                refusal = self._check(scope, input_tokens, output_tokens, now)
                if refusal is not None:
                    return refusal
            self._conn.execute(
                """
                insert or ignore into rate_admissions
                    (id, client, team, owner, admitted_at, input_tokens, output_tokens, state)
                values (?, ?, ?, ?, ?, ?, ?, 'open')
                """,
                (call_id, client, team, self.owner, now, input_tokens, output_tokens),
            )
            self._prune(now)
        return None

    def release(self, call_id: str) -> None:
        """Forget an admission whose call never went upstream (refused after it by another limit)."""
        with self._lock, serialized(self._database, [f"rate:owner:{self.owner}"]):
            self._conn.execute("delete from rate_admissions where id = ?", (call_id,))

    def use(self, scopes: Sequence[tuple[str, str]]) -> list[RateUse]:
        """What each (kind, name) scope has used now: last minute's requests and tokens, calls in flight."""
        now = self._clock()
        with self._lock:
            return [
                RateUse(kind, name, *self._window_sums(kind, name, now), self._in_flight(kind, name, now))
                for kind, name in scopes
            ]

    # -- inside the transaction ----------------------------------------------------------------------

    def _seen(self, now: float) -> None:
        self._conn.execute(
            "insert into proxy_instances (id, seen_at) values (?, ?) "
            "on conflict (id) do update set seen_at = excluded.seen_at",
            (self.owner, now),
        )

    def _check(
        self, scope: RateScope, input_tokens: int, output_tokens: int, now: float
    ) -> RateRefusal | None:
        if scope.concurrent is not None:
            open_calls = self._in_flight(scope.kind, scope.name, now)
            if open_calls + 1 > scope.concurrent:
                return RateRefusal(scope.kind, scope.name, "concurrent", scope.concurrent, open_calls, None)
        wanted = (
            ("rpm", scope.rpm, 1),
            ("input_tpm", scope.input_tpm, input_tokens),
            ("output_tpm", scope.output_tpm, output_tokens),
        )
        checks = [(limit, value, need) for limit, value, need in wanted if value is not None]
        if not checks:
            return None
        events = self._window(scope.kind, scope.name, now)
        for limit, value, need in checks:
            if need > value:
                return RateRefusal(scope.kind, scope.name, limit, value, need, None, never_fits=True)
            used = sum(_amount(event, limit) for event in events)
            if used + need <= value:
                continue
            wait = self._room_in(events, limit, used + need - value, now)
            return RateRefusal(scope.kind, scope.name, limit, value, used, wait)
        return None

    def _room_in(self, events: Sequence[_Event], limit: str, excess: int, now: float) -> float:
        """Seconds until enough of the window's oldest admissions leave it to free `excess` of `limit`."""
        freed = 0
        for event in events:  # oldest first
            freed += _amount(event, limit)
            if freed >= excess:
                return max(0.001, event[0] + self._window_s - now)
        return self._window_s

    def _window(self, kind: str, name: str, now: float) -> list[_Event]:
        column = _scope_column(kind)
        return [
            (float(at), int(inp or 0), int(out or 0))
            for at, inp, out in self._conn.execute(
                f"select admitted_at, input_tokens, output_tokens from rate_admissions "
                f"where {column} = ? and admitted_at > ? order by admitted_at",
                (name, now - self._window_s),
            )
        ]

    def _window_sums(self, kind: str, name: str, now: float) -> tuple[int, int, int]:
        events = self._window(kind, name, now)
        return len(events), sum(e[1] for e in events), sum(e[2] for e in events)

    def _in_flight(self, kind: str, name: str, now: float) -> int:
        column = _scope_column(kind)
        (count,) = self._conn.execute(
            f"select count(*) from rate_admissions where {column} = ? and state = 'open' "
            "and admitted_at > ? and owner in (select id from proxy_instances where seen_at > ?)",
            (name, now - OPEN_TTL_S, now - self._owner_stale_s),
        ).fetchone()
        return int(count)

    def _prune(self, now: float) -> None:
        """Forget admissions out of every window: ended ones, and open ones of a proxy long gone. On
        PostgreSQL, admissions of other scopes prune at the same time: each skips the rows another is
        deleting rather than wait on them."""
        skip = " for update skip locked" if self._postgres else ""
        self._conn.execute(
            "delete from rate_admissions where id in (select id from rate_admissions "
            "where admitted_at < ? and (state = 'done' or owner not in "
            f"(select id from proxy_instances where seen_at > ?)) limit ?{skip})",
            (now - PRUNE_AFTER_S, now - self._owner_stale_s, PRUNE_BATCH),
        )
        self._conn.execute("delete from proxy_instances where seen_at < ?", (now - PRUNE_AFTER_S * 24,))


def _amount(event: _Event, limit: str) -> int:
    """What one admission counts towards a per-minute limit."""
    if limit == "input_tpm":
        return event[1]
    if limit == "output_tpm":
        return event[2]
    return 1


def _scope_column(kind: str) -> str:
    if kind not in ("client", "team"):
        raise ValueError(f"a rate scope is a client or a team, not {kind!r}")
    return kind


def reset_at(refusal: RateRefusal, now: float) -> datetime | None:
    """When the refused limit has room again, as a time (None when not known)."""
    if refusal.retry_after_s is None:
        return None
    return datetime.fromtimestamp(now + refusal.retry_after_s, UTC)


@dataclass(frozen=True, slots=True)
class WindowUse:
    """The most room any usable credential of an upstream has left in one subscription window: its
    utilization (0..1) and when the window resets (None when not said)."""

    window: str
    utilization: float
    resets_at: datetime | None


def window_use(db: Database, host: str, windows: Sequence[str], now: datetime) -> list[WindowUse]:
    """For each named window, the lowest utilization among the upstream's configured credentials that are
    not disabled (the pool can still send a call on the one with the most room), as they last reported it
    (`rate_limits`, from answers and the OAuth usage poll). A window whose reported reset has passed counts as
    empty; a window no credential reported is left out (nothing known: the call is not held back)."""
    # `rate_limits` names a credential as the pool's label does (`keys[0] env:NAME`), never by its secret.
    usable = {
        row["label"]
        for row in db.query(
            "select label from credentials where host = ? and position is not null and state != 'disabled'",
            [host],
        )
    }
    found: dict[str, WindowUse] = {}
    # The report reads through `query` alone, which either engine's connection has.
    for credential in quota(cast(sqlite_utils.Database, db), host=host):
        unified = credential.summary.unified
        if credential.credential not in usable or unified is None:
            continue
        for name in windows:
            window = unified.window(name)
            if window is None or window.utilization is None:
                continue
            used = 0.0 if window.reset_at is not None and window.reset_at <= now else window.utilization
            if name not in found or used < found[name].utilization:
                found[name] = WindowUse(name, used, window.reset_at)
    return [found[name] for name in windows if name in found]


def uncountable_input(scopes: Sequence[RateScope], encoding: str) -> RateRefusal | None:
    """The refusal of a call whose input cannot be counted (a body sent compressed, which sluice could not
    read: its size on the wire says nothing of its tokens) by the first scope that limits input tokens per
    minute; None when none does. Fails closed: such a call could carry any number of tokens past the limit."""
    for scope in scopes:
        if scope.input_tpm is not None:
            why = f"its body is compressed ({encoding}), so sluice cannot count its input tokens"
            return RateRefusal(
                scope.kind, scope.name, "input_tpm", scope.input_tpm, 0, None, never_fits=True, uncounted=why
            )
    return None
