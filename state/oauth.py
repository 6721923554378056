"""The store of OAuth tokens (`OAuthStore`, over the secrets file: state/secrets_db.py).

Refresh tokens rotate and are single-use: two refreshes with the same token get `invalid_grant`, and a
reuse may revoke the whole token family (RFC 9700 §4.14.2). So there is exactly one refresh per expiry:

1. in-process single-flight: one refresh task per credential, which every caller awaits (shielded, so a
   cancelled caller does not cancel the refresh);
2. across processes: a lease row taken under `BEGIN IMMEDIATE` (on PostgreSQL: in a transaction holding the
   advisory lock `oauth:<host>`) that lapses after `lease_s`, so a crashed holder blocks the others for at
   most that long; the others poll for the version to change;
3. compare-and-swap on `version` when the new tokens are stored;
4. on `invalid_grant`, the store is re-read before the credential is declared dead: another process may
   have rotated the token after our lease lapsed.

The HTTP call to the token endpoint is injected (`refresh_fn`, state/oauth_http.py), so this module does no
HTTP.

Seeding rule (`OAuthStore.seed`): the credentials file seeds the store when the store has never seen the
file's token, that is, when the fingerprint of its refresh token (or of its access token, for a long-lived
token with no refresh token) is neither a token the store was seeded with nor one it obtained by
refreshing. sluice never writes the file, so a token the store has seen is one it already holds or has
already spent, and the store's copy is at least as new; an unseen token comes from a new login and wins.
This holds across restarts, across processes, and when a file is restored from an old backup.

The database away (PostgreSQL restarted or unreachable): a process decides from what it last knew. It
keeps serving the access token it last read while that token has not expired, and attempts no refresh, since
a refresh without the lease could spend a refresh token another proxy is spending; once the token has
expired, calls get CredentialUnavailable until the database answers again. A refresh whose new tokens
cannot be stored is kept in memory and written (compare-and-swap on the version it refreshed) as soon as the
database answers. Each of these is logged as a warning, once per outage.

Nothing here logs, raises or stores a secret outside the secrets store: credentials are named by label or
fingerprint, and provider messages are scrubbed of anything that looks like a token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from rules.credential_files import OAuthTokens, TokenResponse
from rules.secrets import fingerprint, scrub
from state.clock import SYSTEM_CLOCK, Clock
from state.secrets_db import open_secrets_db, open_secrets_pg
from state.store import AnyStore, PostgresStore, Store
from state.store.postgres import is_postgres
from state.store_errors import DATABASE_ERRORS, Connection, described, lost, transaction

log = logging.getLogger("sluice")

RefreshFn = Callable[[str], Awaitable[TokenResponse]]


class CredentialDead(Exception):
    """An OAuth credential cannot be used again without operator action (new login, or a reset)."""


class CredentialUnavailable(Exception):
    """An OAuth credential has no valid access token now, but may have again: a refresh failed transiently."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenRefused(Exception):
    """Raised by `refresh_fn` when the token endpoint answers with an OAuth error (RFC 6749 §5.2), such as
    `invalid_grant`. Terminal: retrying the same refresh token cannot succeed. Any other exception raised
    by `refresh_fn` (network, timeout, 5xx, 429) is treated as transient."""

    def __init__(self, error_code: str, message: str = "") -> None:
        super().__init__(f"{error_code}: {message}" if message else error_code)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True, slots=True)
class OAuthStatus:
    """What may be shown about a stored OAuth credential: never a token."""

    key: str
    expires_at: float | None
    has_refresh_token: bool
    version: int
    seed_fingerprint: str
    seeded_at: float
    refreshed_at: float | None
    failed_reason: str | None
    lease_until: float | None


@dataclass(frozen=True, slots=True)
class _TokenRow:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None
    version: int
    lease_owner: str | None
    lease_until: float | None
    failed_reason: str | None
    rejected_fingerprint: str | None

    def fresh(self, now: float, skew_s: float) -> bool:
        """Good for a while yet: no refresh needed."""
        return self.expires_at is None or now < self.expires_at - skew_s

    def valid(self, now: float) -> bool:
        """Not expired: usable while a refresh is under way."""
        return self.expires_at is None or now < self.expires_at


_ROW_COLUMNS = (
    "access_token, refresh_token, expires_at, version, lease_owner, lease_until, failed_reason, "
    "rejected_fingerprint"
)

LeaseOutcome = Literal["taken", "busy", "changed"]
RejectOutcome = Literal["refreshing", "stale", "dead"]
EventFn = Callable[[str, str, str], None]  # (key, event, detail): for the pool's history


class OAuthStore:
    """OAuth tokens over the secrets file, refreshed ahead of expiry, once per expiry across processes.

    One instance per process, keyed by upstream host. `seed`, `clear_failure` and `status` are
    synchronous (start-up, CLI); `access_token` is a coroutine for the event loop: it does its SQLite work
    in `asyncio.to_thread` and never blocks the loop.

    `skew_s`: refresh this long before expiry. `lease_s`: how long a refresh lease holds others off; a
    call to the token endpoint is abandoned (as transient) after `refresh_timeout_s`, at most `lease_s`,
    so that two refreshes never overlap. `poll_s`: how often a waiter re-reads the store.
    `transient_backoff_s`: after a transient failure, no new attempt from this process for this long.
    `recheck_s`: how stale the in-memory copy of a still-fresh token may be. `on_event(key, event,
    detail)` hears of refreshes, refused tokens and heals, for the pool's history; it is called from the
    thread that made the change and must not raise.

    Healing (`reject`, `confirm`): an access token the provider refuses (401) is dropped and refreshed;
    only when its replacement is refused too, before any answer accepted it, is the credential dead.

    `source`: the store (`open_store`) whose secrets it keeps: a SQLite store's 0600 secrets file, or a
    PostgreSQL store's secrets schema; or the path of a secrets file.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | AnyStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        skew_s: float = 300.0,
        lease_s: float = 30.0,
        refresh_timeout_s: float = 20.0,
        poll_s: float = 0.05,
        transient_backoff_s: float = 10.0,
        recheck_s: float = 30.0,
        on_event: EventFn | None = None,
    ) -> None:
        self._open: Callable[[], Connection]
        if isinstance(source, str) and is_postgres(source):
            raise ValueError("an OAuthStore on PostgreSQL is opened on its store (open_store), not on a URL")
        if isinstance(source, PostgresStore):
            self._open = partial(open_secrets_pg, source.location)
        else:
            path = source.secrets_path if isinstance(source, Store) else source
            self._open = partial(open_secrets_db, path)
        self._conn: Connection = self._open()
        self._away = False  # the database did not answer last time: logged once per outage
        self._on_event = on_event
        # Leases, expiries and failures are stored and compared across processes: wall clock (`time()`). The
        # cache's age, the backoff and the wait for another process are this process's own: `monotonic()`.
        self._clock = clock
        self._skew_s = skew_s
        self._lease_s = lease_s
        self._refresh_timeout_s = min(refresh_timeout_s, lease_s)
        self._poll_s = poll_s
        self._transient_backoff_s = transient_backoff_s
        self._recheck_s = recheck_s
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._db_lock = threading.Lock()
        # The last row read per key, and when (`monotonic()`): re-read at most every `recheck_s` while
        # fresh, so a new login seeded or a failure cleared by another process is seen without a restart.
        self._cache: dict[str, tuple[_TokenRow, float]] = {}
        self._inflight: dict[str, asyncio.Task[_TokenRow]] = {}
        self._backoff_until: dict[str, float] = {}  # `monotonic()` before which no refresh is tried
        # Tokens a refresh obtained that the database was away to take: (version refreshed, tokens, when).
        self._unsaved: dict[str, tuple[int, TokenResponse, float]] = {}

    def close(self) -> None:
        with self._db_lock:
            self._conn.close()

    def _connection(self) -> Connection:
        """The connection, opened again when the server dropped it (call with `_db_lock` held). Raises
        the engine's error while the database is away."""
        if lost(self._conn):
            self._conn = self._open()
        return self._conn

    @contextmanager
    def _transaction(self, key: str) -> Iterator[Connection]:
        """A read-then-write transaction on `key`'s row, serialized with every other process's on it."""
        conn = self._connection()
        with transaction(conn, f"oauth:{key}"):
            yield conn

    def seed(self, key: str, tokens: OAuthTokens) -> bool:
        """Offer the credentials file's tokens; True when the store took them (see the seeding rule)."""
        identity = tokens.identity
        now = self._clock.time()
        with self._db_lock, self._transaction(key) as conn:
            exists = conn.execute("select 1 from oauth_tokens where key = ?", (key,)).fetchone()
            seen = conn.execute(
                "select 1 from oauth_seen where key = ? and fingerprint = ?", (key, identity)
            ).fetchone()
            if exists and seen:
                return False
            conn.execute(
                """
                insert into oauth_tokens (key, access_token, refresh_token, expires_at, version,
                                          seed_fingerprint, seeded_at)
                values (?, ?, ?, ?, 1, ?, ?)
                on conflict (key) do update set
                    access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                    expires_at = excluded.expires_at, version = oauth_tokens.version + 1,
                    lease_owner = null, lease_until = null, seed_fingerprint = excluded.seed_fingerprint,
                    seeded_at = excluded.seeded_at, refreshed_at = null, failed_reason = null,
                    failed_at = null, rejected_fingerprint = null
                """,
                (key, tokens.access_token, tokens.refresh_token, tokens.expires_at, identity, now),
            )
            conn.execute("insert or ignore into oauth_seen values (?, ?, ?)", (key, identity, now))
        self._cache.pop(key, None)
        self._backoff_until.pop(key, None)
        log.info("sluice: OAuth credential for %s seeded from its credentials file (%s)", key, identity)
        return True

    def clear_failure(self, key: str) -> bool:
        """Forget that the token endpoint refused this credential, so the next request tries again."""
        with self._db_lock, self._transaction(key) as conn:
            cursor = conn.execute(
                "update oauth_tokens set failed_reason = null, failed_at = null "
                "where key = ? and failed_reason is not null",
                (key,),
            )
        self._cache.pop(key, None)
        self._backoff_until.pop(key, None)
        return cursor.rowcount > 0

    def status(self, key: str) -> OAuthStatus | None:
        with self._db_lock:
            row = (
                self._connection()
                .execute(
                    """
                select expires_at, refresh_token is not null, version, seed_fingerprint, seeded_at,
                       refreshed_at, failed_reason, lease_until
                from oauth_tokens where key = ?
                """,
                    (key,),
                )
                .fetchone()
            )
        if row is None:
            return None
        return OAuthStatus(key, row[0], bool(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])

    async def access_token(self, key: str, refresh_fn: RefreshFn) -> str:
        """A valid access token for `key`, refreshing it when it is within `skew_s` of expiry.

        While the current token is still valid, it is returned at once and the refresh runs in the
        background; once it has expired, callers wait for the one refresh in flight (in this process or
        another). Raises CredentialDead when the token endpoint refused for good (disable the credential
        with its message), CredentialUnavailable when the token expired and a refresh failed transiently.
        """
        cached = self._cache.get(key)
        fresh_enough = cached is not None and self._clock.monotonic() - cached[1] < self._recheck_s
        try:
            row = cached[0] if cached is not None and fresh_enough else await self._load(key)
        except DATABASE_ERRORS as error:
            row = self._last_known(key, error)
        now = self._clock.time()
        if row.failed_reason is not None:
            raise CredentialDead(row.failed_reason)
        if row.fresh(now, self._skew_s):
            return row.access_token
        if row.refresh_token is None:
            if row.valid(now):
                return row.access_token
            raise CredentialDead(
                f"the OAuth access token for {key} has expired and there is no refresh token"
            )
        if row.valid(now):
            if self._clock.monotonic() >= self._backoff_until.get(key, 0.0):
                self._refresh_task(key, refresh_fn)
            return row.access_token
        refreshed = await asyncio.shield(self._refresh_task(key, refresh_fn))
        return refreshed.access_token

    async def refresh_now(self, key: str, refresh_fn: RefreshFn) -> OAuthStatus:
        """Refresh `key`'s tokens now, fresh or not (`sluice credentials --refresh`), under the same rules
        as any refresh: one lease across processes, compare-and-swap on the stored version; when another
        process is refreshing already, its result is this one's. Raises CredentialDead when the token
        endpoint refused (or refused before: reset the credential after a new login), CredentialUnavailable
        when it failed transiently."""
        start = await self._load(key)
        row = await self._obtain(
            key, refresh_fn, lambda current: current.version > start.version, forced=True
        )
        self._cache[key] = (row, self._clock.monotonic())
        status = await asyncio.to_thread(self.status, key)
        if status is None:
            raise CredentialDead(f"no OAuth tokens stored for {key}")
        return status

    def reject(self, key: str, access_token: str, reason: str) -> RejectOutcome:
        """The provider refused `access_token` (401). For `asyncio.to_thread`. Outcomes:

        - "stale": the store holds another token already (refreshed here or by another process): the
          client's retry carries it;
        - "refreshing": the token is dropped (stored as expired) so the next request refreshes it, once,
          under the usual lease; a refusal of a token already dropped is this same outcome;
        - "dead": it cannot heal: the refused token is the replacement of a refused one and nothing has
          accepted it yet, or there is no refresh token. The failure is stored as the store's own refusal
          is, so the credential stays dead here and in every process until a new login or a reset.
        """
        used = fingerprint(access_token)
        now = self._clock.time()
        try:
            with self._db_lock, self._transaction(key) as conn:
                row = self._row(conn, key)
                if row is None or not hmac.compare_digest(row.access_token, access_token):
                    outcome: RejectOutcome = "stale"
                elif row.rejected_fingerprint == used:
                    outcome = "refreshing"
                elif row.rejected_fingerprint is not None or row.refresh_token is None:
                    why = (
                        "the access token obtained after an earlier refusal was refused too"
                        if row.rejected_fingerprint is not None
                        else "the access token was refused and there is no refresh token"
                    )
                    conn.execute(
                        "update oauth_tokens set failed_reason = ?, failed_at = ? where key = ?",
                        (scrub(f"{why}: {reason}"), now, key),
                    )
                    outcome = "dead"
                else:
                    conn.execute(
                        "update oauth_tokens set rejected_fingerprint = ?, expires_at = ? where key = ?",
                        (used, now - 1.0, key),
                    )
                    outcome = "refreshing"
        except DATABASE_ERRORS as e:
            # Nothing can be recorded: this process stops using the refused token, and refreshes it once
            # the database answers (never without the lease).
            log.warning(
                "sluice: could not record that the OAuth token of %s was refused (%s)", key, described(e)
            )
            self._cache.pop(key, None)
            return "refreshing"
        cached = self._cache.get(key)
        if cached is None or hmac.compare_digest(cached[0].access_token, access_token):
            self._cache.pop(key, None)  # re-read: the token this process holds is refused
        if outcome == "refreshing" and row is not None and row.rejected_fingerprint != used:
            self._emit(key, "token_rejected", f"the provider refused the access token ({reason}); refreshing")
        return outcome

    def needs_confirm(self, key: str) -> bool:
        """Whether a good answer should be reported with `confirm` (memory only: cheap on the loop)."""
        cached = self._cache.get(key)
        return cached is not None and cached[0].rejected_fingerprint is not None

    def confirm(self, key: str, access_token: str) -> bool:
        """An answer accepted `access_token`, the replacement of a refused one: the credential has healed.
        For `asyncio.to_thread`. True when this call recorded it."""
        with self._db_lock, self._transaction(key) as conn:
            cursor = conn.execute(
                "update oauth_tokens set rejected_fingerprint = null "
                "where key = ? and access_token = ? and rejected_fingerprint is not null",
                (key, access_token),
            )
        cached = self._cache.get(key)
        if cached is not None and hmac.compare_digest(cached[0].access_token, access_token):
            self._cache[key] = (dataclasses.replace(cached[0], rejected_fingerprint=None), cached[1])
        if cursor.rowcount:
            self._emit(key, "healed", "the refreshed access token was accepted")
        return cursor.rowcount > 0

    def _emit(self, key: str, event: str, detail: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(key, event, detail)
        except Exception as e:  # the history must never stop a token from being used
            log.warning("sluice: could not record the OAuth event %s for %s (%s)", event, key, described(e))

    # -- the refresh -----------------------------------------------------------------------------------

    def _refresh_task(self, key: str, refresh_fn: RefreshFn) -> asyncio.Task[_TokenRow]:
        loop = asyncio.get_running_loop()
        task = self._inflight.get(key)
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._obtain(key, refresh_fn), name=f"sluice oauth refresh {key}")
            self._inflight[key] = task
            task.add_done_callback(partial(self._refresh_done, key))
        return task

    def _refresh_done(self, key: str, task: asyncio.Task[_TokenRow]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: a background refresh may have no awaiting caller

    async def _obtain(
        self,
        key: str,
        refresh_fn: RefreshFn,
        done: Callable[[_TokenRow], bool] | None = None,
        forced: bool = False,
    ) -> _TokenRow:
        """Until the stored token is fresh (or `done`): take the lease and refresh, or wait for whoever holds
        it. `forced`: a person asked; no backoff holds it off, and a transient failure is raised.

        The database away: no refresh without the lease. The token last known while it is valid (unless
        `forced`), else CredentialUnavailable."""
        try:
            return await self._lease_and_refresh(key, refresh_fn, done, forced)
        except DATABASE_ERRORS as error:
            row = self._last_known(key, error)
        if row.valid(self._clock.time()) and not forced:
            return row
        raise CredentialUnavailable(
            f"the OAuth access token for {key} has expired and the database that holds the refresh lease is "
            "unreachable: it is refreshed once the database answers",
            self._transient_backoff_s,
        )

    async def _lease_and_refresh(
        self, key: str, refresh_fn: RefreshFn, done: Callable[[_TokenRow], bool] | None, forced: bool
    ) -> _TokenRow:
        while True:
            row = await self._load(key)
            if done(row) if done is not None else row.fresh(self._clock.time(), self._skew_s):
                return row
            if row.failed_reason is not None:
                raise CredentialDead(row.failed_reason)
            if row.refresh_token is None:
                raise CredentialDead(
                    f"the OAuth access token for {key} expires and there is no refresh token"
                )
            wait = self._backoff_until.get(key, 0.0) - self._clock.monotonic()
            if wait > 0 and not forced:
                raise CredentialUnavailable(
                    f"the OAuth access token for {key} has expired and the last refresh failed; "
                    f"retrying in {math.ceil(wait)}s",
                    wait,
                )
            outcome, leased = await asyncio.to_thread(self._take_lease, key, row.version)
            if outcome == "taken" and leased is not None and leased.refresh_token is not None:
                stored = await self._refresh(key, leased, leased.refresh_token, refresh_fn, forced)
                if stored is not None:
                    return stored
            elif outcome == "busy":
                await self._wait_for_change(key, row.version)

    async def _refresh(
        self, key: str, row: _TokenRow, refresh_token: str, refresh_fn: RefreshFn, forced: bool = False
    ) -> _TokenRow | None:
        """Call the token endpoint while holding the lease. None: the store changed meanwhile; re-read."""
        try:
            response = await asyncio.wait_for(refresh_fn(refresh_token), self._refresh_timeout_s)
        except TokenRefused as refused:
            detail = refused.message or "no description"
            reason = scrub(f"the token endpoint refused the refresh: {refused.error_code}: {detail}")
            # Re-read before calling it dead, atomically: `_mark_failed` marks only the version we spent.
            # Another process may have rotated the token after our lease lapsed, which is exactly why ours
            # was refused; then its tokens are good, and the caller re-reads and uses them.
            if not await asyncio.to_thread(self._mark_failed, key, row.version, reason):
                log.info(
                    "sluice: OAuth refresh for %s was refused, but another process had refreshed it", key
                )
                return None
            self._backoff_until[key] = self._clock.monotonic() + self._transient_backoff_s
            log.error("sluice: OAuth credential for %s is dead: %s", key, reason)
            raise CredentialDead(reason) from None
        except Exception as error:
            await asyncio.to_thread(self._release, key)
            self._backoff_until[key] = self._clock.monotonic() + self._transient_backoff_s
            what = scrub(f"{type(error).__name__}: {error}")
            log.warning(
                "sluice: refreshing the OAuth token for %s failed (%s); retrying in %.0fs",
                key,
                what,
                self._transient_backoff_s,
            )
            if row.valid(self._clock.time()) and not forced:
                return row
            raise CredentialUnavailable(
                f"refreshing the OAuth access token for {key} failed ({what})",
                self._transient_backoff_s,
            ) from None
        except BaseException:
            self._release(key)  # cancelled (shutdown): free the lease now rather than make others wait it out
            raise
        try:
            stored = await asyncio.to_thread(self._store, key, row.version, response)
        except DATABASE_ERRORS as error:
            return self._hold_unsaved(key, row, refresh_token, response, error)
        if stored is None:
            log.warning("sluice: OAuth tokens for %s changed while refreshing; keeping the stored ones", key)
            return None
        self._cache[key] = (stored, self._clock.monotonic())
        minutes = math.ceil(response.expires_in / 60)
        rotated = "; the refresh token rotated" if response.refresh_token else ""
        how = (
            "by hand"
            if forced
            else "ahead of expiry"
            if row.rejected_fingerprint is None
            else "after a refusal"
        )
        # The history is a database write that may wait for another process's lock: off the loop.
        detail = f"access token refreshed {how}, good for {minutes} min{rotated}"
        await asyncio.to_thread(self._emit, key, "refreshed", detail)
        return stored

    async def _load(self, key: str) -> _TokenRow:
        """Read the stored row off the loop, and remember it (on the loop: the cache has one writer). Tokens
        a refresh obtained while the database was away are written first. Raises DATABASE_ERRORS."""
        unsaved = self._unsaved.pop(key, None)  # taken at once: one caller writes them
        if unsaved is not None:
            try:
                stored = await asyncio.to_thread(self._store, key, *unsaved)
            except BaseException:
                self._unsaved.setdefault(key, unsaved)  # still away: kept for the next read
                raise
            if stored is None:
                log.warning("sluice: the OAuth tokens of %s changed while the database was away", key)
        row = await asyncio.to_thread(self._read, key)
        if self._away:
            self._away = False
            log.warning("sluice: the database of the OAuth tokens answers again (%s)", key)
        if row is None:
            self._cache.pop(key, None)
            raise CredentialDead(f"no OAuth tokens stored for {key}: seed them from the credentials file")
        self._cache[key] = (row, self._clock.monotonic())
        return row

    def _last_known(self, key: str, error: Exception) -> _TokenRow:
        """The database is away: the row this process last read (or obtained), remembered anew so that the
        database is tried again only after `recheck_s`, with no refresh tried before `transient_backoff_s`.
        CredentialUnavailable when this process knows of no token."""
        if not self._away:
            self._away = True
            log.warning(
                "sluice: the database of the OAuth tokens is unreachable (%s); using the tokens last known "
                "and refreshing none until it answers",
                scrub(f"{type(error).__name__}: {error}"),
            )
        self._backoff_until[key] = self._clock.monotonic() + self._transient_backoff_s
        cached = self._cache.get(key)
        if cached is None:
            raise CredentialUnavailable(
                f"the database of the OAuth tokens is unreachable and no token for {key} is known yet",
                self._transient_backoff_s,
            ) from None
        self._cache[key] = (cached[0], self._clock.monotonic())
        return cached[0]

    def _hold_unsaved(
        self, key: str, row: _TokenRow, refresh_token: str, response: TokenResponse, error: Exception
    ) -> _TokenRow:
        """A refresh succeeded but the database went away before it took the new tokens: the old refresh
        token may be spent, so the new ones are used from memory and written as soon as it answers."""
        now = self._clock.time()
        self._unsaved[key] = (row.version, response, now)
        held = _TokenRow(
            response.access_token,
            response.refresh_token or refresh_token,
            now + response.expires_in,
            row.version,
            None,
            None,
            None,
            row.rejected_fingerprint,
        )
        self._cache[key] = (held, self._clock.monotonic())
        self._away = True
        log.warning(
            "sluice: the OAuth token for %s was refreshed but the database could not store it (%s); "
            "holding it in memory until the database answers",
            key,
            scrub(f"{type(error).__name__}: {error}"),
        )
        return held

    async def _wait_for_change(self, key: str, version: int) -> None:
        """Poll until the version moves, the lease is released or lapses, or the credential failed."""
        give_up = self._clock.monotonic() + self._lease_s + 1.0
        while self._clock.monotonic() < give_up:
            await asyncio.sleep(self._poll_s)
            current = await asyncio.to_thread(self._read, key)
            if (
                current is None
                or current.version != version
                or current.failed_reason is not None
                or current.lease_owner is None
                or (current.lease_until or 0.0) <= self._clock.time()
            ):
                return

    # -- SQLite, called through asyncio.to_thread ------------------------------------------------------

    def _read(self, key: str) -> _TokenRow | None:
        with self._db_lock:
            return self._row(self._connection(), key)

    def _row(self, conn: Connection, key: str) -> _TokenRow | None:
        """The stored row; call with `_db_lock` held."""
        found = conn.execute(f"select {_ROW_COLUMNS} from oauth_tokens where key = ?", (key,)).fetchone()
        return None if found is None else _TokenRow(*found)

    def _take_lease(self, key: str, version: int) -> tuple[LeaseOutcome, _TokenRow | None]:
        now = self._clock.time()
        with self._db_lock, self._transaction(key) as conn:
            row = self._row(conn, key)
            if row is None or row.version != version or row.failed_reason is not None:
                return "changed", row
            if row.lease_owner not in (None, self._owner) and (row.lease_until or 0.0) > now:
                return "busy", row
            conn.execute(
                "update oauth_tokens set lease_owner = ?, lease_until = ? where key = ?",
                (self._owner, now + self._lease_s, key),
            )
        return "taken", row

    def _store(
        self, key: str, version: int, response: TokenResponse, at: float | None = None
    ) -> _TokenRow | None:
        """Compare-and-swap on `version`: the new tokens land only if nobody stored others meanwhile. `at`:
        when they were obtained (now, unless they waited in memory for the database)."""
        now = self._clock.time() if at is None else at
        with self._db_lock, self._transaction(key) as conn:
            cursor = conn.execute(
                """
                update oauth_tokens set
                    access_token = ?, refresh_token = coalesce(?, refresh_token), expires_at = ?,
                    version = version + 1, refreshed_at = ?, failed_reason = null, failed_at = null,
                    lease_owner = case when lease_owner = ? then null else lease_owner end,
                    lease_until = case when lease_owner = ? then null else lease_until end
                where key = ? and version = ?
                """,
                (
                    response.access_token,
                    response.refresh_token,
                    now + response.expires_in,
                    now,
                    self._owner,
                    self._owner,
                    key,
                    version,
                ),
            )
            if cursor.rowcount != 1:
                self._release_locked(conn, key)
                return None
            if response.refresh_token:
                conn.execute(
                    "insert or ignore into oauth_seen values (?, ?, ?)",
                    (key, fingerprint(response.refresh_token), now),
                )
            stored = self._row(conn, key)
        return stored

    def _mark_failed(self, key: str, version: int, reason: str) -> bool:
        """Record a terminal refusal, unless the tokens changed since `version` (compare-and-swap)."""
        with self._db_lock, self._transaction(key) as conn:
            cursor = conn.execute(
                """
                update oauth_tokens set failed_reason = ?, failed_at = ?, lease_owner = null,
                    lease_until = null
                where key = ? and version = ?
                """,
                (reason, self._clock.time(), key, version),
            )
            if cursor.rowcount != 1:
                self._release_locked(conn, key)
        return cursor.rowcount == 1

    def _release(self, key: str) -> None:
        """Give the lease back; when the database is away it lapses by itself after `lease_s`."""
        try:
            with self._db_lock:
                self._release_locked(self._connection(), key)
        except DATABASE_ERRORS as e:
            log.warning("sluice: could not release the OAuth refresh lease of %s (%s)", key, described(e))

    def _release_locked(self, conn: Connection, key: str) -> None:
        conn.execute(
            "update oauth_tokens set lease_owner = null, lease_until = null "
            "where key = ? and lease_owner = ?",
            (key, self._owner),
        )
