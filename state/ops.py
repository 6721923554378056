"""What the ops side reads from the database (pool state, quotas, budgets) and the alerts it records.

Everything here blocks on SQLite: call it from a thread of its own, never from the event loop. It reads
through the stores' own public functions (the credential pool, the OAuth store, the budget ledger, the
quota report), so it sees what every process sharing the database wrote.

The `alerts` table (one row per alert and webhook) is also how several processes agree that one crossing
is alerted once: the first to insert the crossing's `dedup` key delivers it, the others find it taken.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from state.budgets import BudgetLedger, ClientBudget
from state.oauth import OAuthStore
from state.pool import CredentialPool, CredentialState
from state.report import quota
from state.store import AnyStore, Database, PostgresStore, open_store, redact_error
from state.store_errors import DATABASE_ERRORS, transaction

log = logging.getLogger("sluice")


@dataclass(frozen=True, slots=True)
class WindowLevel:
    """A subscription window's (or the overall) utilization, as the provider last reported it."""

    host: str
    credential: str
    window: str
    utilization: float | None
    status: str | None
    reset_at: datetime | None


@dataclass(frozen=True, slots=True)
class LimitLevel:
    """A counted limit (requests, tokens, ...): how much is left of how much."""

    host: str
    credential: str
    limit_name: str
    remaining: int | None
    limit: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    credentials: tuple[CredentialState, ...] = ()
    oauth_expires_at: tuple[tuple[str, float], ...] = ()  # (host, epoch seconds)
    windows: tuple[WindowLevel, ...] = ()
    limits: tuple[LimitLevel, ...] = ()
    budgets: tuple[ClientBudget, ...] = ()


class OpsReader:
    """Reads a `Snapshot` of the shared state. One owner thread; its connections are its own."""

    def __init__(self, db_path: str | Path) -> None:
        self._db_path = db_path
        self._store: AnyStore | None = None
        self._db: Database | None = None
        self._oauth: OAuthStore | None = None

    def _open_store(self) -> AnyStore:
        if self._store is None:
            self._store = open_store(self._db_path)
        return self._store

    def _open(self) -> Database:
        if self._db is None:
            self._db = self._open_store().connect()
        return self._db

    def _oauth_store(self) -> OAuthStore | None:
        if self._oauth is None:
            store = self._open_store()
            if isinstance(store, PostgresStore):
                self._oauth = OAuthStore(store)  # its secrets schema, which the migrations created
            elif store.secrets_path.exists():  # never create the secrets file: only the credential part does
                self._oauth = OAuthStore(store.secrets_path)
        return self._oauth

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The state now. A store that cannot be read leaves its part empty (logged): fails open, as the
        gauges then show nothing rather than stale values."""
        now = time.time() if now is None else now
        try:
            db = self._open()
            credentials = tuple(CredentialPool(db).states(now))
            windows, limits = _quota_levels(db)
            budgets = tuple(BudgetLedger(db).status())
        except DATABASE_ERRORS as e:
            log.warning(
                "sluice: ops: could not read the database (%s); gauges skipped this time",
                redact_error(str(self._db_path), e),
            )
            self.close()
            return Snapshot(at=now)
        return Snapshot(
            at=now,
            credentials=credentials,
            oauth_expires_at=self._oauth_expiry({c.host for c in credentials if c.kind == "oauth"}),
            windows=windows,
            limits=limits,
            budgets=budgets,
        )

    def _oauth_expiry(self, hosts: set[str]) -> tuple[tuple[str, float], ...]:
        if not hosts:
            return ()
        try:
            store = self._oauth_store()
            if store is None:
                return ()
            found = []
            for host in sorted(hosts):
                status = store.status(host)
                if status is not None and status.expires_at is not None:
                    found.append((host, float(status.expires_at)))
            return tuple(found)
        except DATABASE_ERRORS as e:
            log.warning("sluice: ops: could not read OAuth expiry (%s)", redact_error(str(self._db_path), e))
            return ()

    def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None
        if self._oauth is not None:
            self._oauth.close()
            self._oauth = None
        if self._store is not None:
            self._store.close()
            self._store = None


def _quota_levels(db: Database) -> tuple[tuple[WindowLevel, ...], tuple[LimitLevel, ...]]:
    windows: list[WindowLevel] = []
    limits: list[LimitLevel] = []
    for entry in quota(db):
        summary = entry.summary
        if summary.unified is not None:
            unified = summary.unified
            windows.append(
                WindowLevel(entry.host, entry.credential, "overall", None, unified.status, unified.reset_at)
            )
            windows.extend(
                WindowLevel(entry.host, entry.credential, w.name, w.utilization, w.status, w.reset_at)
                for w in unified.windows
            )
        limits.extend(
            LimitLevel(
                entry.host, entry.credential, f"{limit.provider}:{limit.name}", limit.remaining, limit.limit
            )
            for limit in summary.limits
        )
    return tuple(windows), tuple(limits)


# -- the alerts table ----------------------------------------------------------------------------------------


class AlertLog:
    """The `alerts` table, over a connection of its own. One owner thread (the alert delivery thread)."""

    def __init__(self, db: Database) -> None:
        self._conn = db.conn

    def claim(self, *, dedup: str, webhook: str, at: float, event: str, subject: str, message: str) -> bool:
        """Record the alert as pending; False when that crossing was already recorded for this webhook (by
        this process before a restart, or by another process sharing the database): do not deliver."""
        with transaction(self._conn, f"alert:{dedup}"):
            cursor = self._conn.execute(
                "insert or ignore into alerts (dedup, webhook, at, event, subject, message) "
                "values (?, ?, ?, ?, ?, ?)",
                (dedup, webhook, at, event, subject, message),
            )
        return cursor.rowcount == 1

    def finish(self, *, dedup: str, webhook: str, delivered: bool, attempts: int, error: str | None) -> None:
        with transaction(self._conn, f"alert:{dedup}"):
            self._conn.execute(
                "update alerts set state = ?, attempts = ?, error = ?, delivered_at = ? "
                "where dedup = ? and webhook = ?",
                (
                    "delivered" if delivered else "failed",
                    attempts,
                    error,
                    time.time() if delivered else None,
                    dedup,
                    webhook,
                ),
            )
