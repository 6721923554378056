"""The credential pool each upstream host draws from (`CredentialPool`, table `credentials` in the main
database).

Each upstream host has an ordered list of credentials (API keys and/or one OAuth credential) and every
request takes the FIRST usable one: a provider's prompt cache lives per key, so spreading requests would
throw cache hits away. A credential is `active`, `cooling` until a time (429, 529) or `disabled` with the
provider's reason (401, 403). The state lives in the store's database so it survives restarts and is
shared by every mitmdump process on the same SQLite file or PostgreSQL database. A row names a credential by
host + `fingerprint(secret)` + a display label; the secret itself is never stored, so a key whose secret
changes is a new credential that starts out active.

`choose()` runs per request on the event loop, so it reads an in-memory view that is reloaded from the
database at most every `refresh_every` seconds, or at once after this process changed something. State
changes are rare (a 429, a 529, a 401) and are written synchronously in one small `BEGIN IMMEDIATE`
transaction. If the database refuses the write, this process still honours the change and says so.

What an answer means for a credential is judged in rules/provider_answers.py; the pool only applies the
verdict. Nothing here logs or stores a secret: credentials are named by label or fingerprint, and provider
messages are scrubbed of anything that looks like a token (rules/secrets.py).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rules.provider_answers import ErrorFields, Kind, Verdict, judge_answer
from rules.provider_answers import headroom as read_headroom
from rules.provider_answers import quota_status as read_quota_status
from rules.providers import GATEWAY_FORMAT, format_of, provider_for_host
from rules.secrets import scrub
from state.clock import SYSTEM_CLOCK, Clock
from state.store import Database
from state.store_errors import DATABASE_ERRORS, lost, transaction

log = logging.getLogger("sluice")

StateName = Literal["active", "cooling", "disabled"]
Routing = Literal["affinity", "first"]

# A conversation idle this long has no prompt cache left to keep (Anthropic's longest cache TTL is 1 hour):
# its next call may start on whichever credential has the most room.
AFFINITY_TTL_S = 3600.0
MAX_CONVERSATIONS = 65_536  # remembered in memory per process; the database keeps the rest
PRUNE_EVERY_PINS = 500
# Headroom is written to the database when it moves by this much: often enough to steer new conversations,
# rarely enough to cost nothing per call.
HEADROOM_STEP = 0.05
# How often a process whose database connection was dropped tries to open a new one.
RECONNECT_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class CredentialEntry:
    """One configured credential of an upstream, as the addon builds it from the config."""

    label: str
    fingerprint: str
    kind: Kind = "key"


@dataclass(frozen=True, slots=True)
class CredentialState:
    """A credential's row, as `sluice credentials` shows it. `state` is the effective state at read time:
    a cooldown that has passed reads as `active`. `position` is None once the config no longer lists it.
    `quota_status` and `headroom` are what the provider last said of its limits (None: never said)."""

    host: str
    label: str
    fingerprint: str
    kind: Kind
    position: int | None
    state: StateName
    reason: str | None
    cooling_until: float | None
    changed_at: float | None
    quota_status: str | None = None
    headroom: float | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """The credential to use, or why there is none: `retry_after_s` is the wait until the soonest cooling
    credential is usable (None when every one is disabled); `reasons` has one line per credential.

    With a conversation: `pin` says the conversation's credential should be recorded (`CredentialPool.pin`,
    off the event loop): it is new to this conversation, or its record is getting old. `moved_from` is the
    credential the conversation was on, when that one is not usable now."""

    credential: CredentialEntry | None = None
    retry_after_s: float | None = None
    reasons: tuple[str, ...] = ()
    pin: bool = False
    moved_from: CredentialEntry | None = None


@dataclass(frozen=True, slots=True)
class CredentialEvent:
    """One row of the pool's history (`credential_events`)."""

    at: float
    host: str
    fingerprint: str | None
    label: str | None
    event: str
    detail: str | None
    until: float | None


@dataclass(frozen=True, slots=True)
class _Status:
    state: StateName
    reason: str | None = None
    until: float | None = None

    def usable(self, now: float) -> bool:
        return self.state == "active" or (self.state == "cooling" and (self.until or 0.0) <= now)


@dataclass(slots=True)
class _Pinned:
    fingerprint: str
    used_at: float  # this process's last use (wall clock)
    saved_at: float  # when the database last heard of it


@dataclass(slots=True)
class _Limits:
    quota_status: str | None = None
    headroom: float | None = None


_ACTIVE = _Status("active")


_POOL_COLUMNS = (
    "host, fingerprint, label, kind, position, state, reason, cooling_until, changed_at, "
    "quota_status, headroom"
)


class CredentialPool:
    """The credential pools of every upstream host, over the main database.

    Give it a connection of its own (`store.connect()`, state/store) and, so that it outlives a PostgreSQL
    restart, `reconnect=store.connect`: its writes are transactions under `BEGIN IMMEDIATE` on SQLite, under
    the advisory lock `credentials:<host>` on PostgreSQL. Methods
    are thread-safe. `choose`, `limits_changed` and `needs_recovery` are cheap enough for the event loop
    (`choose` reads the database only for a conversation this process has not seen, and never waits for it:
    while a write of this process holds the connection, it routes from memory); the writers (`apply`,
    `cool_down`, `disable`, `recover`, `pin`, `record_limits`, `record_event`) write one small transaction
    and belong in `asyncio.to_thread`; `sync_config`, `states`, `events` and `reset` are for start-up and
    the CLI. Every change of state is written to `credential_events` in the same transaction.

    Routing (`choose`, per upstream): "first" takes the first usable credential in the config's order.
    "affinity" keeps a conversation on the credential it started on while that one is usable, even after an
    earlier one recovers (its prompt cache is there); a conversation whose credential cools or dies moves to
    the usable one with the most room per conversation, as does a new conversation, so load spreads before
    any key hits a wall: the headroom the provider last reported (rules/provider_answers.py `headroom`; a
    credential that has not reported yet counts as having all of it) divided by one plus the live
    conversations this process has on it, counted the moment they are placed. Ties go to the config's order.
    """

    def __init__(
        self,
        db: Database,
        *,
        reconnect: Callable[[], Database] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        refresh_every: float = 1.0,
        affinity_ttl_s: float = AFFINITY_TTL_S,
        max_conversations: int = MAX_CONVERSATIONS,
    ) -> None:
        self._conn = db.conn
        # Opens the connection again when the server dropped it (PostgreSQL restarted or away): in a thread
        # of its own, never on the event loop, at most every RECONNECT_EVERY_S.
        self._reconnect = reconnect
        self._reconnecting = threading.Lock()
        self._reconnect_at = 0.0  # `monotonic()` before which no new attempt
        self._away = False  # the database did not answer last time: said once per outage
        # Cooldowns, pins and events are stored and shared between processes: wall clock (`time()`). The age
        # of this process's view of them is its own: `monotonic()`.
        self._clock = clock
        self._refresh_every = refresh_every
        self._affinity_ttl_s = affinity_ttl_s
        self._max_conversations = max_conversations
        # Held across each use of the connection, writes waiting on `busy_timeout` included. The event loop
        # (`choose`) only ever tries it: a write held up by another process must not stall every request.
        self._lock = threading.Lock()
        self._pins_lock = threading.Lock()  # `_pinned` alone: held for microseconds
        self._entries: dict[str, tuple[CredentialEntry, ...]] = {}
        self._view: dict[tuple[str, str], _Status] = {}
        # Changes the database refused: this process honours them anyway, over whatever it reloads.
        self._unsaved: dict[tuple[str, str], _Status] = {}
        self._limits: dict[tuple[str, str], _Limits] = {}
        self._pinned: OrderedDict[tuple[str, str], _Pinned] = OrderedDict()
        self._conversations: dict[
            tuple[str, str], int
        ] = {}  # (host, fingerprint) -> live pinned conversations
        self._loaded_at: float | None = None  # `monotonic()` of the last reload: the view's age is ours alone
        self._pins_since_prune = 0

    def sync_config(self, host: str, entries: Sequence[CredentialEntry]) -> None:
        """Declare `host`'s credentials, in the config's order. New ones start active; known ones keep
        their state. Raises ValueError when two entries hold the same secret, sqlite3.Error when the
        database refuses (the pool is then usable in memory, without the shared state)."""
        seen: dict[str, str] = {}
        for entry in entries:
            if entry.fingerprint in seen:
                raise ValueError(f"{host}: {seen[entry.fingerprint]} and {entry.label} hold the same secret")
            seen[entry.fingerprint] = entry.label
        now = self._clock.time()
        with self._lock:
            self._entries[host] = tuple(entries)
            self._loaded_at = None
            with transaction(self._conn, _lock_name(host)):
                self._conn.execute(
                    "update credentials set position = null where host = ? and position is not null", (host,)
                )
                self._conn.executemany(
                    """
                    insert into credentials (host, fingerprint, label, kind, position, state, changed_at,
                                             configured_at)
                    values (?, ?, ?, ?, ?, 'active', ?, ?)
                    on conflict (host, fingerprint) do update set
                        label = excluded.label, kind = excluded.kind, position = excluded.position,
                        configured_at = excluded.configured_at
                    """,
                    [
                        (host, entry.fingerprint, entry.label, entry.kind, position, now, now)
                        for position, entry in enumerate(entries)
                    ],
                )

    # -- choosing ---------------------------------------------------------------------------------------

    def choose(
        self,
        host: str,
        conversation: str | None = None,
        routing: Routing = "affinity",
        now: float | None = None,
    ) -> Choice:
        """The credential for a request to `host` (see the class docstring), or why none is usable."""
        now = self._clock.time() if now is None else now
        if self._lock.acquire(blocking=False):  # else a write is under way: the view in memory will do
            try:
                self._reload_if_stale()
            finally:
                self._lock.release()
        entries = self._entries.get(host, ())
        view = self._view
        if not entries:
            return Choice(reasons=(f"no credentials configured for {host}",))
        usable = [e for e in entries if view.get((host, e.fingerprint), _ACTIVE).usable(now)]
        if not usable:
            return _nothing_usable(host, entries, view, now)
        if routing == "first":
            return Choice(credential=usable[0])
        pinned = self._pinned_to(host, conversation, now) if conversation else None
        if pinned is not None:
            for entry in usable:
                if entry.fingerprint == pinned.fingerprint:
                    pinned.used_at = now
                    return Choice(credential=entry, pin=now - pinned.saved_at > self._affinity_ttl_s / 6)
        with self._pins_lock:
            self._expire_pins(now)
            # The most room per conversation already there: headroom as the provider last reported it, and
            # the live conversations this process has put on each key since (counted at once, so a burst of
            # new or moved conversations spreads instead of herding onto the key that looked emptiest).
            best = max(  # max keeps the first of ties: the config's order
                usable,
                key=lambda e: (
                    self._headroom(host, e.fingerprint)
                    / (1 + self._conversations.get((host, e.fingerprint), 0))
                ),
            )
        if conversation is None:
            return Choice(credential=best)
        # Not `known`: whether another process recorded this conversation could not be read without waiting
        # for a write in progress; it is placed as a new one, here and in the database (the last word wins).
        moved_from = None
        if pinned is not None:
            moved_from = next((e for e in entries if e.fingerprint == pinned.fingerprint), None)
        # In memory at once, so this conversation's next call finds it even before `pin` has written it.
        self._remember_pin((host, conversation), _Pinned(best.fingerprint, now, 0.0))
        return Choice(credential=best, pin=True, moved_from=moved_from)

    def _headroom(self, host: str, fingerprint: str) -> float:
        limits = self._limits.get((host, fingerprint))
        return 1.0 if limits is None or limits.headroom is None else limits.headroom

    def _pinned_to(self, host: str, conversation: str, now: float) -> _Pinned | None:
        """Which credential the conversation is on: None when none, when idle too long, or when the database
        is busy with a write of this process (never waited for on the event loop)."""
        key = (host, conversation)
        with self._pins_lock:
            pinned = self._pinned.get(key)
        if pinned is None:
            if not self._lock.acquire(blocking=False):
                return None
            try:
                pinned = self._load_pin(key)
            finally:
                self._lock.release()
        if pinned is None or now - pinned.used_at > self._affinity_ttl_s:
            with self._pins_lock:
                expired = self._pinned.pop(key, None)
                if expired is not None:
                    self._count(host, expired.fingerprint, -1)
            return None
        self._remember_pin(key, pinned)
        return pinned

    def _remember_pin(self, key: tuple[str, str], pinned: _Pinned) -> None:
        host = key[0]
        with self._pins_lock:
            previous = self._pinned.get(key)
            if previous is None or previous.fingerprint != pinned.fingerprint:
                if previous is not None:
                    self._count(host, previous.fingerprint, -1)
                self._count(host, pinned.fingerprint, +1)
            self._pinned[key] = pinned
            self._pinned.move_to_end(key)
            while len(self._pinned) > self._max_conversations:
                (evicted_host, _), evicted = self._pinned.popitem(last=False)
                self._count(evicted_host, evicted.fingerprint, -1)

    def _expire_pins(self, now: float) -> None:
        """Forget conversations idle longer than the affinity TTL (least recently used first: they are at
        the front). Call with `_pins_lock` held."""
        while self._pinned:
            key, oldest = next(iter(self._pinned.items()))
            if now - oldest.used_at <= self._affinity_ttl_s:
                return
            del self._pinned[key]
            self._count(key[0], oldest.fingerprint, -1)

    def _count(self, host: str, fingerprint: str, change: int) -> None:
        """Call with `_pins_lock` held."""
        left = self._conversations.get((host, fingerprint), 0) + change
        if left > 0:
            self._conversations[(host, fingerprint)] = left
        else:
            self._conversations.pop((host, fingerprint), None)

    def _load_pin(self, key: tuple[str, str]) -> _Pinned | None:
        try:
            row = self._conn.execute(
                "select fingerprint, used_at from credential_affinity where host = ? and conversation = ?",
                key,
            ).fetchone()
        except DATABASE_ERRORS as e:
            self._revive()
            log.warning("sluice: could not read which credential a conversation is on (%s)", e)
            return None
        return None if row is None else _Pinned(str(row[0]), float(row[1]), float(row[1]))

    def pin(
        self,
        host: str,
        conversation: str,
        entry: CredentialEntry,
        moved_from: CredentialEntry | None = None,
        now: float | None = None,
    ) -> None:
        """Record that `conversation` is on `entry` (shared with other processes), and, when it was on
        another credential, that it moved and why. For `asyncio.to_thread`."""
        now = self._clock.time() if now is None else now
        self._remember_pin((host, conversation), _Pinned(entry.fingerprint, now, now))
        with self._lock:
            status = self._view.get((host, moved_from.fingerprint), _ACTIVE) if moved_from else None
            try:
                with transaction(self._conn, _lock_name(host)):
                    self._conn.execute(
                        "insert into credential_affinity values (?, ?, ?, ?) "
                        "on conflict (host, conversation) do update set "
                        "fingerprint = excluded.fingerprint, used_at = excluded.used_at",
                        (host, conversation, entry.fingerprint, now),
                    )
                    if moved_from is not None and status is not None:
                        why = f"{status.state}: {status.reason}" if status.reason else status.state
                        self._insert_event(
                            now,
                            host,
                            entry.fingerprint,
                            entry.label,
                            "conversation_moved",
                            f"conversation {conversation[:12]} moved from {moved_from.label} ({why}) "
                            f"to {entry.label}: its prompt cache starts over",
                        )
                    self._pins_since_prune += 1
                    if self._pins_since_prune >= PRUNE_EVERY_PINS:
                        self._pins_since_prune = 0
                        self._conn.execute(
                            "delete from credential_affinity where used_at < ?", (now - self._affinity_ttl_s,)
                        )
            except DATABASE_ERRORS as e:
                self._revive()
                log.warning("sluice: could not record which credential a conversation is on (%s)", e)

    # -- what the provider said ---------------------------------------------------------------------------

    def report(
        self,
        host: str,
        fingerprint: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
        now: float | None = None,
    ) -> CredentialState | None:
        """Judge an upstream answer given to a swapped credential (rules/provider_answers.py) and apply it.
        Returns the new state, or None when nothing changed."""
        now = self._clock.time() if now is None else now
        error = ErrorFields(message=message or "")
        kind = self._kind(host, fingerprint)
        speaker = provider_for_host(host) or format_of(GATEWAY_FORMAT)  # the pool knows hosts, not upstreams
        verdict = judge_answer(speaker, status, headers or {}, error, kind, now)
        return self.apply(host, fingerprint, verdict, now)

    def apply(
        self, host: str, fingerprint: str, verdict: Verdict, now: float | None = None
    ) -> CredentialState | None:
        """Move the pool as `verdict` says: cool (rate limit), cool until a window resets, or disable.
        Overloaded and refused-OAuth verdicts are not the pool's to act on (the breaker and the OAuth store
        are); they change nothing here. Returns the new state, or None when nothing changed."""
        if verdict.action == "cool" and verdict.seconds is not None:
            return self.cool_down(host, fingerprint, verdict.seconds, verdict.reason, now)
        if verdict.action == "window" and verdict.seconds is not None:
            return self.cool_down(host, fingerprint, verdict.seconds, verdict.reason, now, "window_exhausted")
        if verdict.action == "disable":
            return self.disable(host, fingerprint, verdict.reason, now)
        return None

    def cool_down(
        self,
        host: str,
        fingerprint: str,
        seconds: float,
        reason: str,
        now: float | None = None,
        event: str = "cooled",
    ) -> CredentialState | None:
        """Rest a credential for `seconds`. A disabled credential stays disabled; a longer cooldown
        already in place is kept."""
        now = self._clock.time() if now is None else now
        until = now + max(0.0, seconds)
        new = _Status("cooling", scrub(reason), until)

        def decide(current: _Status) -> _Status | None:
            if current.state == "disabled":
                return None
            if current.state == "cooling" and (current.until or 0.0) >= until:
                return None
            return new

        return self._change(host, fingerprint, decide, now, event, forget_headroom=True)

    def disable(
        self, host: str, fingerprint: str, reason: str, now: float | None = None
    ) -> CredentialState | None:
        """Take a credential out of the pool until `reset` or until its secret changes."""
        now = self._clock.time() if now is None else now
        new = _Status("disabled", scrub(reason))
        return self._change(
            host, fingerprint, lambda current: None if current.state == "disabled" else new, now, "disabled"
        )

    def needs_recovery(self, host: str, fingerprint: str) -> bool:
        """Whether a good answer on this credential ends a cooldown still on record (cheap: memory only)."""
        return self._view.get((host, fingerprint), _ACTIVE).state == "cooling"

    def recover(self, host: str, fingerprint: str, now: float | None = None) -> CredentialState | None:
        """A credential whose cooldown has passed answered well: record it active again, and say so."""
        now = self._clock.time() if now is None else now

        def decide(current: _Status) -> _Status | None:
            return _ACTIVE if current.state == "cooling" and (current.until or 0.0) <= now else None

        return self._change(host, fingerprint, decide, now, "recovered")

    def limits_changed(
        self, host: str, fingerprint: str, quota_status: str | None, headroom: float | None
    ) -> bool:
        """Whether what an answer said of the credential's limits is news worth writing (memory only): a
        subscription status that changed, or headroom that moved by HEADROOM_STEP or more."""
        known = self._limits.get((host, fingerprint))
        if known is None:
            return quota_status is not None or headroom is not None
        if quota_status is not None and quota_status != known.quota_status:
            return True
        if headroom is None:
            return False
        return known.headroom is None or abs(headroom - known.headroom) >= HEADROOM_STEP

    def limits_news(
        self, host: str, fingerprint: str, headers: Mapping[str, str]
    ) -> tuple[str | None, float | None] | None:
        """What rate-limit headers (or a usage reading put as such) say of the credential's subscription
        status and headroom, when it is news worth `record_limits` (memory only: cheap on the loop); None
        when it is not."""
        status, room = read_quota_status(headers), read_headroom(headers)
        return (status, room) if self.limits_changed(host, fingerprint, status, room) else None

    def record_limits(
        self,
        host: str,
        fingerprint: str,
        quota_status: str | None,
        headroom: float | None,
        now: float | None = None,
    ) -> None:
        """Keep what the provider said of a credential's limits, for every process; a change of
        subscription status (allowed → allowed_warning → rejected and back) goes into the history."""
        now = self._clock.time() if now is None else now
        key = (host, fingerprint)
        with self._lock:
            known = self._limits.setdefault(key, _Limits())
            before = known.quota_status
            if quota_status is not None:
                known.quota_status = quota_status
            if headroom is not None:
                known.headroom = headroom
            label = self._label(host, fingerprint)
            try:
                with transaction(self._conn, _lock_name(host)):
                    self._conn.execute(
                        """
                        update credentials set quota_status = coalesce(?, quota_status),
                            headroom = coalesce(?, headroom), headroom_at = ?
                        where host = ? and fingerprint = ?
                        """,
                        (quota_status, headroom, now, host, fingerprint),
                    )
                    if quota_status is not None and quota_status != before:
                        detail = f"subscription status {before or 'unknown'} → {quota_status}"
                        self._insert_event(now, host, fingerprint, label, "quota", detail)
            except DATABASE_ERRORS as e:
                self._revive()
                log.warning("sluice: could not record %s %s's limits (%s)", host, label, e)

    def record_event(
        self,
        host: str,
        event: str,
        detail: str | None = None,
        fingerprint: str | None = None,
        until: float | None = None,
        now: float | None = None,
    ) -> None:
        """Add a row to the history that no state change carries (an OAuth refresh, the provider-wide
        breaker). Never raises: the history must not stop a request."""
        now = self._clock.time() if now is None else now
        label = self._label(host, fingerprint) if fingerprint else None
        with self._lock:
            try:
                with transaction(self._conn, _lock_name(host)):
                    self._insert_event(now, host, fingerprint, label, event, detail, until)
            except DATABASE_ERRORS as e:
                self._revive()
                log.warning("sluice: could not record the credential event %s for %s (%s)", event, host, e)

    def oauth_fingerprint(self, host: str) -> str | None:
        """The pool's name for `host`'s OAuth credential, if it has one (from the config this process
        declared, else from the database: the CLI declares none)."""
        declared = next((e.fingerprint for e in self._entries.get(host, ()) if e.kind == "oauth"), None)
        if declared is not None or host in self._entries:
            return declared
        with self._lock:
            row = self._conn.execute(
                "select fingerprint from credentials where host = ? and kind = 'oauth' "
                "order by position is null, changed_at desc limit 1",
                (host,),
            ).fetchone()
        return None if row is None else str(row[0])

    # -- for the CLI ----------------------------------------------------------------------------------------

    def reset(self, host: str, label_or_fingerprint: str) -> list[CredentialState]:
        """Make the credentials of `host` with this label (or fingerprint) active again; for the CLI.
        Returns the credentials reset, empty when none matched. For an OAuth credential, also clear the
        store's failure (`OAuthStore.clear_failure(host)`), or its dead refresh token is tried once more
        and fails again."""
        now = self._clock.time()
        with self._lock:
            with transaction(self._conn, _lock_name(host)):
                rows = self._conn.execute(
                    f"select {_POOL_COLUMNS} from credentials "
                    "where host = ? and (label = ? or fingerprint = ?)",
                    (host, label_or_fingerprint, label_or_fingerprint),
                ).fetchall()
                self._conn.executemany(
                    """
                    update credentials set state = 'active', reason = null, cooling_until = null,
                        changed_at = ?
                    where host = ? and fingerprint = ?
                    """,
                    [(now, host, row[1]) for row in rows],
                )
                for row in rows:
                    was = f"was {row[5]}" + (f": {row[6]}" if row[6] else "")
                    self._insert_event(now, host, str(row[1]), str(row[2]), "reset", f"reset by hand ({was})")
            for row in rows:
                self._unsaved.pop((host, row[1]), None)
            self._loaded_at = None
        return [_state_from_row((*row[:5], "active", None, None, now, *row[9:]), now) for row in rows]

    def states(self, now: float | None = None) -> list[CredentialState]:
        """Every credential the database knows, by host and configured order, read fresh."""
        now = self._clock.time() if now is None else now
        with self._lock:
            rows = self._conn.execute(
                f"""
                select {_POOL_COLUMNS} from credentials
                order by host, position is null, position, changed_at desc
                """
            ).fetchall()
        return [_state_from_row(row, now) for row in rows]

    def events(
        self, since: float | None = None, limit: int = 200, host: str | None = None
    ) -> list[CredentialEvent]:
        """The history, newest first."""
        clauses: list[str] = ["at >= ?"]
        params: list[object] = [since if since is not None else 0.0]
        if host is not None:
            clauses.append("host = ?")
            params.append(host)
        with self._lock:
            rows = self._conn.execute(
                "select at, host, fingerprint, label, event, detail, until from credential_events "
                f"where {' and '.join(clauses)} order by at desc, id desc limit ?",
                (*params, limit),
            ).fetchall()
        return [CredentialEvent(*row) for row in rows]

    # -- internals ------------------------------------------------------------------------------------

    def _kind(self, host: str, fingerprint: str) -> Kind:
        entry = next((e for e in self._entries.get(host, ()) if e.fingerprint == fingerprint), None)
        return entry.kind if entry else "key"

    def _label(self, host: str, fingerprint: str | None) -> str:
        entry = next((e for e in self._entries.get(host, ()) if e.fingerprint == fingerprint), None)
        return entry.label if entry else str(fingerprint)

    def _insert_event(
        self,
        at: float,
        host: str,
        fingerprint: str | None,
        label: str | None,
        event: str,
        detail: str | None,
        until: float | None = None,
    ) -> None:
        self._conn.execute(
            "insert into credential_events (at, host, fingerprint, label, event, detail, until) "
            "values (?, ?, ?, ?, ?, ?, ?)",
            (at, host, fingerprint, label, event, None if detail is None else scrub(detail), until),
        )

    def _reload_if_stale(self) -> None:
        mono = self._clock.monotonic()
        if self._loaded_at is not None and mono - self._loaded_at < self._refresh_every:
            return
        self._loaded_at = mono
        try:
            rows = self._conn.execute(  # one row per credential ever configured: a handful
                "select host, fingerprint, state, reason, cooling_until, quota_status, headroom "
                "from credentials"
            ).fetchall()
        except DATABASE_ERRORS as e:
            # Fail open on the last view: a database hiccup must not stop requests.
            if not self._away:
                self._away = True
                log.warning("sluice: could not reload credential states (%s); using the last known ones", e)
            self._view = {**self._view, **self._unsaved}
            self._revive()
            return
        if self._away:
            self._away = False
            log.warning("sluice: the credential states can be read again")
        view = {}
        limits = {}
        for host, fp, state, reason, until, quota, room in rows:
            if state != "active":
                view[(host, fp)] = _status(state, reason, until)
            # Another process's word on the limits counts as much as ours: the newest reload wins.
            if quota is not None or room is not None:
                limits[(host, fp)] = _Limits(quota, _float(room))
        self._limits = limits
        for key, status in self._unsaved.items():
            view[key] = status
        self._view = view

    def _revive(self) -> None:
        """Open the connection again in the background when the server dropped it. The pool keeps deciding
        from its last view meanwhile; writes that fail are honoured by this process alone, as always."""
        if self._reconnect is None or not lost(self._conn) or self._clock.monotonic() < self._reconnect_at:
            return
        if not self._reconnecting.acquire(blocking=False):
            return  # an attempt is under way
        self._reconnect_at = self._clock.monotonic() + RECONNECT_EVERY_S
        threading.Thread(target=self._reopen, args=(self._reconnect,), name="sluice-pool-reconnect").start()

    def _reopen(self, reconnect: Callable[[], Database]) -> None:
        try:
            db = reconnect()
        except DATABASE_ERRORS as e:
            log.warning("sluice: the credential pool's database is still unreachable (%s)", e)
            return
        finally:
            self._reconnecting.release()
        with self._lock:
            self._conn, old = db.conn, self._conn
            self._loaded_at = None
        old.close()

    def _change(
        self,
        host: str,
        fingerprint: str,
        decide: Callable[[_Status], _Status | None],
        now: float,
        event: str,
        forget_headroom: bool = False,
    ) -> CredentialState | None:
        """Apply `decide` to the credential's state in one transaction, with its event. `forget_headroom`:
        a rest outlasts the limit it is for, so the headroom last reported is dropped (the key counts as
        having all its room again once usable, until it reports)."""
        label = self._label(host, fingerprint)
        kind = self._kind(host, fingerprint)
        key = (host, fingerprint)
        with self._lock:
            try:
                with transaction(self._conn, _lock_name(host)):
                    row = self._conn.execute(
                        f"select {_POOL_COLUMNS} from credentials where host = ? and fingerprint = ?", key
                    ).fetchone()
                    current = _status(row[5], row[6], row[7]) if row else _ACTIVE
                    new = decide(current)
                    if new is None:
                        return None
                    self._conn.execute(
                        """
                        insert into credentials (host, fingerprint, label, kind, state, reason, cooling_until,
                                                 changed_at)
                        values (?, ?, ?, ?, ?, ?, ?, ?)
                        on conflict (host, fingerprint) do update set
                            state = excluded.state, reason = excluded.reason,
                            cooling_until = excluded.cooling_until, changed_at = excluded.changed_at
                        """,
                        (host, fingerprint, label, kind, new.state, new.reason, new.until, now),
                    )
                    self._insert_event(now, host, fingerprint, label, event, new.reason, new.until)
                    if forget_headroom:
                        self._conn.execute(
                            "update credentials set headroom = null where host = ? and fingerprint = ?", key
                        )
                self._unsaved.pop(key, None)
                position = row[4] if row else None
            except DATABASE_ERRORS as e:
                self._revive()
                new = decide(self._view.get(key, _ACTIVE))
                if new is None:
                    return None
                self._unsaved[key] = new
                position = None
                log.error(
                    "sluice: could not record credential %s %s as %s (%s); only this process will honour it",
                    host,
                    label,
                    new.state,
                    e,
                )
            if forget_headroom and key in self._limits:
                self._limits[key].headroom = None
            if new.state == "active":
                self._view.pop(key, None)
            else:
                self._view = {**self._view, key: new}
            self._loaded_at = None
        return CredentialState(
            host, label, fingerprint, kind, position, new.state, new.reason, new.until, now
        )


def _nothing_usable(
    host: str, entries: Sequence[CredentialEntry], view: Mapping[tuple[str, str], _Status], now: float
) -> Choice:
    soonest: float | None = None
    reasons: list[str] = []
    for entry in entries:
        status = view.get((host, entry.fingerprint), _ACTIVE)
        if status.state == "cooling":
            wait = (status.until or now) - now
            soonest = wait if soonest is None else min(soonest, wait)
            reasons.append(f"{entry.label}: cooling for {math.ceil(wait)}s ({status.reason})")
        else:
            reasons.append(f"{entry.label}: disabled ({status.reason})")
    return Choice(retry_after_s=soonest, reasons=tuple(reasons))


def _state_from_row(row: Sequence[object], now: float) -> CredentialState:
    host, fp, label, kind, position, state, reason, until, changed_at, quota, room = row
    status = _status(state, reason, until)
    if status.state == "cooling" and status.usable(now):
        status = _ACTIVE
    return CredentialState(
        host=str(host),
        label=str(label),
        fingerprint=str(fp),
        kind="oauth" if kind == "oauth" else "key",
        position=position if isinstance(position, int) else None,
        state=status.state,
        reason=status.reason,
        cooling_until=status.until,
        changed_at=_float(changed_at),
        quota_status=None if quota is None else str(quota),
        headroom=_float(room),
    )


def _status(state: object, reason: object, until: object) -> _Status:
    name: StateName = "cooling" if state == "cooling" else "disabled" if state == "disabled" else "active"
    return _Status(name, None if reason is None else str(reason), _float(until))


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _lock_name(host: str) -> str:
    """What a pool write serializes on (PostgreSQL's advisory lock; SQLite locks the whole file): one
    upstream host's credentials."""
    return f"credentials:{host}"
