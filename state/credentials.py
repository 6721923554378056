"""Upstream credentials: the pool each upstream host draws from, and the store of OAuth tokens.

**Pool** (`CredentialPool`, table `credentials` in the main database). Each upstream host has an ordered
list of credentials (API keys and/or one OAuth credential) and every request takes the FIRST usable one:
a provider's prompt cache lives per key, so spreading requests would throw cache hits away. A credential
is `active`, `cooling` until a time (429, 529) or `disabled` with the provider's reason (401, 403). The
state lives in SQLite so it survives restarts and is shared by every mitmdump process on the same file.
A row names a credential by host + `fingerprint(secret)` + a display label; the secret itself is never
stored, so a key whose secret changes is a new credential that starts out active.

`choose()` runs per request on the event loop, so it reads an in-memory view that is reloaded from the
database at most every `refresh_every` seconds, or at once after this process changed something. State
changes are rare (a 429, a 529, a 401) and are written synchronously in one small `BEGIN IMMEDIATE`
transaction. If the database refuses the write, this process still honours the change and says so.

**OAuth store** (`OAuthStore`, a separate SQLite file with mode 0600, `<db stem>.secrets.db`). Refresh
tokens rotate and are single-use: two refreshes with the same token get `invalid_grant`, and a reuse may
revoke the whole token family (RFC 9700 §4.14.2). So there is exactly one refresh per expiry:

1. in-process single-flight: one refresh task per credential, which every caller awaits (shielded, so a
   cancelled caller does not cancel the refresh);
2. across processes: a lease row taken under `BEGIN IMMEDIATE` that lapses after `lease_s`, so a crashed
   holder blocks the others for at most that long; the others poll for the version to change;
3. compare-and-swap on `version` when the new tokens are stored;
4. on `invalid_grant`, the store is re-read before the credential is declared dead: another process may
   have rotated the token after our lease lapsed.

The HTTP call to the token endpoint is injected (`refresh_fn`), so this module does no HTTP.

Seeding rule (`OAuthStore.seed`): the credentials file seeds the store when the store has never seen the
file's token, that is, when the fingerprint of its refresh token (or of its access token, for a long-lived
token with no refresh token) is neither a token the store was seeded with nor one it obtained by
refreshing. sluice never writes the file, so a token the store has seen is one it already holds or has
already spent, and the store's copy is at least as new; an unseen token comes from a new login and wins.
This holds across restarts, across processes, and when a file is restored from an old backup.

Nothing here logs, raises or stores a secret outside the secrets file: credentials are named by label or
fingerprint, and provider messages are scrubbed of anything that looks like a token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import sqlite_utils

from rules.provider_answers import ErrorFields, Verdict, judge_answer
from rules.provider_answers import headroom as read_headroom
from rules.provider_answers import quota_status as read_quota_status
from rules.secrets import unusable_secret
from state.db import immediate

log = logging.getLogger("sluice")

Kind = Literal["key", "oauth"]
StateName = Literal["active", "cooling", "disabled"]
RefreshFn = Callable[[str], Awaitable["TokenResponse"]]

Routing = Literal["affinity", "first"]

# A conversation idle this long has no prompt cache left to keep (Anthropic's longest cache TTL is 1 hour):
# its next call may start on whichever credential has the most room.
AFFINITY_TTL_S = 3600.0
MAX_CONVERSATIONS = 65_536  # remembered in memory per process; the database keeps the rest
PRUNE_EVERY_PINS = 500
# Headroom is written to the database when it moves by this much: often enough to steer new conversations,
# rarely enough to cost nothing per call.
HEADROOM_STEP = 0.05
REASON_MAX_CHARS = 300
BUSY_TIMEOUT_MS = 10_000


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


# -- naming credentials -----------------------------------------------------------------------------------


def fingerprint(secret: str) -> str:
    """A stable, non-reversible name for a secret: tells credentials apart, useless to an attacker.

    Same form as the `credential` column of `calls` and `rate_limits`, so the tables join on it.
    """
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def describe_reference(field_name: str, reference: str) -> str:
    """The display label of a configured secret: `keys[0] env:ANTHROPIC_KEY_1`, or `keys[0] (inline)`
    for a literal, whose text is the secret itself."""
    if reference.startswith(("env:", "file:")):
        return f"{field_name} {reference}"
    return f"{field_name} (inline)"


# Runs of token characters long enough to be a credential. Provider messages are short prose; OpenAI's
# 401 echoes a masked key, and a careless proxy in between could echo more.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-]{24,}")


def scrub(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """`text` on one line, with anything token-shaped cut to its first 6 characters, characters a terminal
    would act on (escapes, bells) written out as escapes (`\\x1b`), and at most `limit` characters."""
    printable = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in " ".join(text.split()))
    cleaned = _TOKEN_LIKE.sub(lambda match: match.group()[:6] + "…", printable)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


# -- the pool ----------------------------------------------------------------------------------------------


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

    Give it a connection of its own (`state.db.connect(path)`): it runs `BEGIN IMMEDIATE` on it. Methods
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
        db: sqlite_utils.Database,
        *,
        clock: Callable[[], float] = time.time,
        refresh_every: float = 1.0,
        affinity_ttl_s: float = AFFINITY_TTL_S,
        max_conversations: int = MAX_CONVERSATIONS,
    ) -> None:
        self._conn = db.conn
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
        self._loaded_at: float | None = None
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
        now = self._clock()
        with self._lock:
            self._entries[host] = tuple(entries)
            self._loaded_at = None
            with immediate(self._conn):
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
        now = self._clock() if now is None else now
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
        except sqlite3.Error as e:
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
        now = self._clock() if now is None else now
        self._remember_pin((host, conversation), _Pinned(entry.fingerprint, now, now))
        with self._lock:
            status = self._view.get((host, moved_from.fingerprint), _ACTIVE) if moved_from else None
            try:
                with immediate(self._conn):
                    self._conn.execute(
                        "insert or replace into credential_affinity values (?, ?, ?, ?)",
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
            except sqlite3.Error as e:
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
        now = self._clock() if now is None else now
        error = ErrorFields(message=message or "")
        verdict = judge_answer(status, headers or {}, error, self._kind(host, fingerprint), now)
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
        now = self._clock() if now is None else now
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
        now = self._clock() if now is None else now
        new = _Status("disabled", scrub(reason))
        return self._change(
            host, fingerprint, lambda current: None if current.state == "disabled" else new, now, "disabled"
        )

    def needs_recovery(self, host: str, fingerprint: str) -> bool:
        """Whether a good answer on this credential ends a cooldown still on record (cheap: memory only)."""
        return self._view.get((host, fingerprint), _ACTIVE).state == "cooling"

    def recover(self, host: str, fingerprint: str, now: float | None = None) -> CredentialState | None:
        """A credential whose cooldown has passed answered well: record it active again, and say so."""
        now = self._clock() if now is None else now

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
        now = self._clock() if now is None else now
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
                with immediate(self._conn):
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
            except sqlite3.Error as e:
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
        now = self._clock() if now is None else now
        label = self._label(host, fingerprint) if fingerprint else None
        with self._lock:
            try:
                with immediate(self._conn):
                    self._insert_event(now, host, fingerprint, label, event, detail, until)
            except sqlite3.Error as e:
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
        now = self._clock()
        with self._lock:
            with immediate(self._conn):
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
        now = self._clock() if now is None else now
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
        mono = time.monotonic()
        if self._loaded_at is not None and mono - self._loaded_at < self._refresh_every:
            return
        self._loaded_at = mono
        try:
            rows = self._conn.execute(  # one row per credential ever configured: a handful
                "select host, fingerprint, state, reason, cooling_until, quota_status, headroom "
                "from credentials"
            ).fetchall()
        except sqlite3.Error as e:
            # Fail open on the last view: a database hiccup must not stop requests.
            log.warning("sluice: could not reload credential states (%s); using the last known ones", e)
            self._view = {**self._view, **self._unsaved}
            return
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
                with immediate(self._conn):
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
            except sqlite3.Error as e:
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


# -- OAuth tokens ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuthTokens:
    """Tokens as a credentials file holds them. `expires_at` is epoch seconds, None when unknown."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    scopes: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """The fingerprint that names this login: of the refresh token, else of the access token. Use it
        as the pool fingerprint of the OAuth credential, so a new login is a new credential."""
        return fingerprint(self.refresh_token or self.access_token)


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A token endpoint's answer (RFC 6749 §5.1). `refresh_token` None keeps the old one."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: float = 3600.0


# Epoch values above this are milliseconds: 1e11 seconds is the year 5138, 1e11 ms is 1973.
_EPOCH_MS_THRESHOLD = 100_000_000_000


def parse_oauth_credentials(text: str) -> OAuthTokens:
    """Read a credentials file's text. Accepted shapes:

    - Claude Code's `.credentials.json`: `{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt"
      (epoch milliseconds), "scopes"}}`;
    - a flat `{"access_token", "refresh_token", "expires_at"}` (epoch seconds; milliseconds are detected);
    - a bare long-lived token (for example from `claude setup-token`): no refresh, no known expiry.

    Raises ValueError naming the missing or malformed field, never a value.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("the OAuth credentials are empty")
    if not stripped.startswith(("{", "[", '"')):
        if any(char.isspace() for char in stripped):
            raise ValueError("the OAuth credentials are neither JSON nor a single token")
        if (problem := unusable_secret(stripped)) is not None:
            raise ValueError(f"the OAuth token cannot be used: {problem}")
        return OAuthTokens(access_token=stripped)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise ValueError(f"the OAuth credentials are not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("the OAuth credentials must be a JSON object")
    nested = data.get("claudeAiOauth")
    if isinstance(nested, dict):
        return _tokens_from(nested, "claudeAiOauth.", "accessToken", "refreshToken", "expiresAt", "scopes")
    return _tokens_from(data, "", "access_token", "refresh_token", "expires_at", "scope")


def _tokens_from(
    data: dict[str, object], prefix: str, access: str, refresh: str, expires: str, scopes: str
) -> OAuthTokens:
    access_token = data.get(access)
    if not isinstance(access_token, str) or not access_token.strip():
        raise ValueError(f"the OAuth credentials have no {prefix}{access}")
    refresh_token = data.get(refresh)
    if refresh_token is not None and not isinstance(refresh_token, str):
        raise ValueError(f"{prefix}{refresh} must be a string")
    for name, token in ((access, access_token), (refresh, refresh_token)):
        if token and (problem := unusable_secret(token.strip())) is not None:
            raise ValueError(f"{prefix}{name} cannot be used: {problem}")
    expires_at = data.get(expires)
    if expires_at is not None and (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        raise ValueError(f"{prefix}{expires} must be a number (epoch time)")
    if expires_at is not None and expires_at > _EPOCH_MS_THRESHOLD:
        expires_at = expires_at / 1000
    raw_scopes = data.get(scopes)
    scope_list = raw_scopes.split() if isinstance(raw_scopes, str) else raw_scopes
    return OAuthTokens(
        access_token=access_token.strip(),
        refresh_token=(refresh_token.strip() or None) if refresh_token else None,
        expires_at=None if expires_at is None else float(expires_at),
        scopes=tuple(str(s) for s in scope_list) if isinstance(scope_list, list) else (),
    )


# -- the secrets file --------------------------------------------------------------------------------------


def secrets_path_for(db_path: str | os.PathLike[str]) -> Path:
    """Where the OAuth store lives for a main database: `sluice.db` → `sluice.secrets.db`, beside it."""
    path = Path(db_path).expanduser()
    return path.with_name(f"{path.stem}.secrets.db")


def _secrets_1_tokens(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table oauth_tokens (
            key text primary key,          -- the upstream host
            access_token text not null,
            refresh_token text,            -- null for a long-lived token
            expires_at real,               -- epoch seconds; null when unknown (never refreshed ahead)
            version integer not null,      -- +1 on every store: the compare-and-swap token
            lease_owner text,              -- process holding the refresh lease
            lease_until real,              -- epoch seconds the lease lapses at
            seed_fingerprint text not null,
            seeded_at real not null,
            refreshed_at real,
            failed_reason text,            -- set when the token endpoint refused for good
            failed_at real
        )
        """
    )
    # Fingerprints of every refresh (or long-lived access) token the store was seeded with or obtained:
    # the seeding rule in the module docstring.
    conn.execute(
        """
        create table oauth_seen (
            key text not null, fingerprint text not null, seen_at real not null,
            primary key (key, fingerprint)
        )
        """
    )


def _secrets_2_rejections(conn: sqlite3.Connection) -> None:
    # The fingerprint of the access token the provider last refused (401) while the token that replaced it
    # has not yet been accepted: when the replacement is refused too, the credential cannot heal.
    conn.execute("alter table oauth_tokens add column rejected_fingerprint text")


SECRETS_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_secrets_1_tokens, _secrets_2_rejections]


def open_secrets_db(
    path: str | os.PathLike[str], *, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """Open (creating with mode 0600) and migrate the secrets file.

    The file is created by `os.open(..., 0o600)` before SQLite touches it, whatever the umask, and a file
    that already exists with group or other bits loses them. SQLite gives its `-wal` and `-shm` files the
    database file's mode.
    """
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    for candidate in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
        if candidate is file:
            fd = os.open(candidate, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        elif candidate.exists() and candidate.stat().st_mode & 0o077:
            candidate.chmod(0o600)
    conn = sqlite3.connect(
        str(file), timeout=busy_timeout_ms / 1000, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"pragma busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("pragma journal_mode = wal")
    conn.execute("pragma synchronous = normal")
    version = conn.execute("pragma user_version").fetchone()[0]
    if version < len(SECRETS_MIGRATIONS):
        with immediate(conn):
            version = conn.execute("pragma user_version").fetchone()[0]  # another process may have won
            for migration in SECRETS_MIGRATIONS[version:]:
                migration(conn)
            conn.execute(f"pragma user_version = {len(SECRETS_MIGRATIONS)}")
    return conn


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
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        skew_s: float = 300.0,
        lease_s: float = 30.0,
        refresh_timeout_s: float = 20.0,
        poll_s: float = 0.05,
        transient_backoff_s: float = 10.0,
        recheck_s: float = 30.0,
        on_event: EventFn | None = None,
    ) -> None:
        self._conn = open_secrets_db(path)
        self._on_event = on_event
        self._clock = clock  # wall clock: leases are compared across processes
        self._skew_s = skew_s
        self._lease_s = lease_s
        self._refresh_timeout_s = min(refresh_timeout_s, lease_s)
        self._poll_s = poll_s
        self._transient_backoff_s = transient_backoff_s
        self._recheck_s = recheck_s
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._db_lock = threading.Lock()
        # The last row read per key, and when (time.monotonic()): re-read at most every `recheck_s` while
        # fresh, so a new login seeded or a failure cleared by another process is seen without a restart.
        self._cache: dict[str, tuple[_TokenRow, float]] = {}
        self._inflight: dict[str, asyncio.Task[_TokenRow]] = {}
        self._backoff_until: dict[str, float] = {}  # time.monotonic() before which no refresh is tried

    def close(self) -> None:
        with self._db_lock:
            self._conn.close()

    def seed(self, key: str, tokens: OAuthTokens) -> bool:
        """Offer the credentials file's tokens; True when the store took them (see the seeding rule)."""
        identity = tokens.identity
        now = self._clock()
        with self._db_lock, immediate(self._conn):
            exists = self._conn.execute("select 1 from oauth_tokens where key = ?", (key,)).fetchone()
            seen = self._conn.execute(
                "select 1 from oauth_seen where key = ? and fingerprint = ?", (key, identity)
            ).fetchone()
            if exists and seen:
                return False
            self._conn.execute(
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
            self._conn.execute("insert or ignore into oauth_seen values (?, ?, ?)", (key, identity, now))
        self._cache.pop(key, None)
        self._backoff_until.pop(key, None)
        log.info("sluice: OAuth credential for %s seeded from its credentials file (%s)", key, identity)
        return True

    def clear_failure(self, key: str) -> bool:
        """Forget that the token endpoint refused this credential, so the next request tries again."""
        with self._db_lock, immediate(self._conn):
            cursor = self._conn.execute(
                "update oauth_tokens set failed_reason = null, failed_at = null "
                "where key = ? and failed_reason is not null",
                (key,),
            )
        self._cache.pop(key, None)
        self._backoff_until.pop(key, None)
        return cursor.rowcount > 0

    def status(self, key: str) -> OAuthStatus | None:
        with self._db_lock:
            row = self._conn.execute(
                """
                select expires_at, refresh_token is not null, version, seed_fingerprint, seeded_at,
                       refreshed_at, failed_reason, lease_until
                from oauth_tokens where key = ?
                """,
                (key,),
            ).fetchone()
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
        row = (
            cached[0] if cached and time.monotonic() - cached[1] < self._recheck_s else await self._load(key)
        )
        now = self._clock()
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
            if time.monotonic() >= self._backoff_until.get(key, 0.0):
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
        self._cache[key] = (row, time.monotonic())
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
        now = self._clock()
        with self._db_lock, immediate(self._conn):
            row = self._row(key)
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
                self._conn.execute(
                    "update oauth_tokens set failed_reason = ?, failed_at = ? where key = ?",
                    (scrub(f"{why}: {reason}"), now, key),
                )
                outcome = "dead"
            else:
                self._conn.execute(
                    "update oauth_tokens set rejected_fingerprint = ?, expires_at = ? where key = ?",
                    (used, now - 1.0, key),
                )
                outcome = "refreshing"
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
        with self._db_lock, immediate(self._conn):
            cursor = self._conn.execute(
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
            log.warning("sluice: could not record the OAuth event %s for %s (%s)", event, key, e)

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
        it. `forced`: a person asked; no backoff holds it off, and a transient failure is raised."""
        while True:
            row = await self._load(key)
            if done(row) if done is not None else row.fresh(self._clock(), self._skew_s):
                return row
            if row.failed_reason is not None:
                raise CredentialDead(row.failed_reason)
            if row.refresh_token is None:
                raise CredentialDead(
                    f"the OAuth access token for {key} expires and there is no refresh token"
                )
            wait = self._backoff_until.get(key, 0.0) - time.monotonic()
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
            self._backoff_until[key] = time.monotonic() + self._transient_backoff_s
            log.error("sluice: OAuth credential for %s is dead: %s", key, reason)
            raise CredentialDead(reason) from None
        except Exception as error:
            await asyncio.to_thread(self._release, key)
            self._backoff_until[key] = time.monotonic() + self._transient_backoff_s
            what = scrub(f"{type(error).__name__}: {error}")
            log.warning(
                "sluice: refreshing the OAuth token for %s failed (%s); retrying in %.0fs",
                key,
                what,
                self._transient_backoff_s,
            )
            if row.valid(self._clock()) and not forced:
                return row
            raise CredentialUnavailable(
                f"refreshing the OAuth access token for {key} failed ({what})",
                self._transient_backoff_s,
            ) from None
        except BaseException:
            self._release(key)  # cancelled (shutdown): free the lease now rather than make others wait it out
            raise
        stored = await asyncio.to_thread(self._store, key, row.version, response)
        if stored is None:
            log.warning("sluice: OAuth tokens for %s changed while refreshing; keeping the stored ones", key)
            return None
        self._cache[key] = (stored, time.monotonic())
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
        """Read the stored row off the loop, and remember it (on the loop: the cache has one writer)."""
        row = await asyncio.to_thread(self._read, key)
        if row is None:
            self._cache.pop(key, None)
            raise CredentialDead(f"no OAuth tokens stored for {key}: seed them from the credentials file")
        self._cache[key] = (row, time.monotonic())
        return row

    async def _wait_for_change(self, key: str, version: int) -> None:
        """Poll until the version moves, the lease is released or lapses, or the credential failed."""
        give_up = time.monotonic() + self._lease_s + 1.0
        while time.monotonic() < give_up:
            await asyncio.sleep(self._poll_s)
            current = await asyncio.to_thread(self._read, key)
            if (
                current is None
                or current.version != version
                or current.failed_reason is not None
                or current.lease_owner is None
                or (current.lease_until or 0.0) <= self._clock()
            ):
                return

    # -- SQLite, called through asyncio.to_thread ------------------------------------------------------

    def _read(self, key: str) -> _TokenRow | None:
        with self._db_lock:
            return self._row(key)

    def _row(self, key: str) -> _TokenRow | None:
        """The stored row; call with `_db_lock` held."""
        found = self._conn.execute(
            f"select {_ROW_COLUMNS} from oauth_tokens where key = ?", (key,)
        ).fetchone()
        return None if found is None else _TokenRow(*found)

    def _take_lease(self, key: str, version: int) -> tuple[LeaseOutcome, _TokenRow | None]:
        now = self._clock()
        with self._db_lock, immediate(self._conn):
            row = self._row(key)
            if row is None or row.version != version or row.failed_reason is not None:
                return "changed", row
            if row.lease_owner not in (None, self._owner) and (row.lease_until or 0.0) > now:
                return "busy", row
            self._conn.execute(
                "update oauth_tokens set lease_owner = ?, lease_until = ? where key = ?",
                (self._owner, now + self._lease_s, key),
            )
        return "taken", row

    def _store(self, key: str, version: int, response: TokenResponse) -> _TokenRow | None:
        """Compare-and-swap on `version`: the new tokens land only if nobody stored others meanwhile."""
        now = self._clock()
        with self._db_lock, immediate(self._conn):
            cursor = self._conn.execute(
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
                self._release_locked(key)
                return None
            if response.refresh_token:
                self._conn.execute(
                    "insert or ignore into oauth_seen values (?, ?, ?)",
                    (key, fingerprint(response.refresh_token), now),
                )
            stored = self._row(key)
        return stored

    def _mark_failed(self, key: str, version: int, reason: str) -> bool:
        """Record a terminal refusal, unless the tokens changed since `version` (compare-and-swap)."""
        with self._db_lock, immediate(self._conn):
            cursor = self._conn.execute(
                """
                update oauth_tokens set failed_reason = ?, failed_at = ?, lease_owner = null,
                    lease_until = null
                where key = ? and version = ?
                """,
                (reason, self._clock(), key, version),
            )
            if cursor.rowcount != 1:
                self._release_locked(key)
        return cursor.rowcount == 1

    def _release(self, key: str) -> None:
        with self._db_lock:
            self._release_locked(key)

    def _release_locked(self, key: str) -> None:
        self._conn.execute(
            "update oauth_tokens set lease_owner = null, lease_until = null "
            "where key = ? and lease_owner = ?",
            (key, self._owner),
        )
