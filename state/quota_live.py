"""Quota read from the provider instead of waited for: the OAuth usage endpoint, through a configured login.

`sluice quota --live` (state/cli.py) and the proxy's poll (addons/quota_poll.py) both read it here. A reading
is the endpoint's answer written as rate-limit headers (rules/providers/anthropic/oauth_usage.py: utilization
turned from a percent into the headers' 0..1 fraction), stored in `rate_limits` under the upstream's host and
the OAuth credential's label, the same (host, credential) that calls through the proxy record their headers
under, with `call_id` = `oauth-usage` to tell it apart. `sluice quota` then shows the newest of both.

The endpoint is called on the configured upstream's host and port only (the token goes nowhere else), and
the token comes from the OAuth store under its usual rules (refreshed ahead of expiry, one refresh per
expiry across processes). No token is logged, raised or stored here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rules.config import ConfigError, OAuth, Upstream, resolve_secret
from rules.credential_files import TokenResponse, parse_oauth_credentials
from rules.destination import Destination
from rules.providers.anthropic.oauth_usage import SOURCE, headers_from_usage
from rules.secrets import describe_reference, scrub
from state.oauth import CredentialDead, CredentialUnavailable, OAuthStore, RefreshFn, TokenRefused
from state.oauth_http import REFRESH_TIMEOUT_S, UsageRefused, get_usage, post_refresh
from state.pool import CredentialPool
from state.ratelimits import QuotaSummary, summarize
from state.store import Database
from state.writer import QuotaRecord

# What a reading can fail with; each is a message for the operator, never a crash.
READ_ERRORS = (CredentialDead, CredentialUnavailable, UsageRefused, OSError, ConfigError, LookupError)


@dataclass(frozen=True)
class UsageReading:
    """One answer of the usage endpoint for one upstream's OAuth credential."""

    host: str  # as rows name it: `api.anthropic.com`, or `name:port` off 443
    credential: str  # the OAuth credential's label, as calls through the proxy record it
    headers: tuple[tuple[str, str], ...]
    observed_at: datetime

    @property
    def summary(self) -> QuotaSummary:
        return summarize(dict(self.headers), self.observed_at)

    def record(self) -> QuotaRecord:
        return QuotaRecord(
            host=self.host,
            credential=self.credential,
            rate_limits=self.headers,
            observed_at=self.observed_at.isoformat(),
            source=SOURCE,
        )


def row_host(upstream: Upstream) -> str:
    """The upstream as `rate_limits.host` names it: where calls to it really go (rules/destination.py)."""
    return Destination.of("https", upstream.host, upstream.port).authority


def credential_label(oauth: OAuth) -> str:
    """The OAuth credential's label, as the proxy's pool names it (and records it on each call)."""
    return describe_reference("oauth", oauth.credentials)


def read_usage(upstream: Upstream, access_token: str, context: ssl.SSLContext) -> UsageReading:
    """Ask `upstream`'s usage endpoint, on its configured host and port. Blocking: run it in a thread.

    Raises UsageRefused or OSError (rules/providers/anthropic/oauth_usage.py and state/oauth_http.py say
    which and when).
    """
    if upstream.oauth is None:
        raise LookupError(f"{upstream.host} has no OAuth credential")
    answer = get_usage(upstream.host, upstream.port, access_token, context)
    observed_at = datetime.now(UTC)
    try:
        headers = headers_from_usage(answer)
    except ValueError as e:
        raise OSError(f"usage endpoint: {e}") from None
    return UsageReading(row_host(upstream), credential_label(upstream.oauth), tuple(headers), observed_at)


def refresher(oauth: OAuth, context: ssl.SSLContext) -> RefreshFn:
    """The `refresh_fn` for the OAuth store: the token endpoint, in a thread, verified with `context`."""

    async def refresh(refresh_token: str) -> TokenResponse:
        if not oauth.token_url or not oauth.client_id:
            raise TokenRefused("not_configured", "oauth.token_url and oauth.client_id are needed to refresh")
        return await asyncio.to_thread(post_refresh, oauth, refresh_token, context)

    return refresh


def seed_store(store: OAuthStore, upstream: Upstream, config_dir: Path | None) -> None:
    """Offer the credentials file to the store, as the proxy does at start (the store's seeding rule decides
    whether it takes it). Raises ConfigError naming the field, never a value."""
    if upstream.oauth is None:
        raise LookupError(f"{upstream.host} has no OAuth credential")
    field = f"upstreams[{upstream.host}].oauth.credentials"
    text, _ = resolve_secret(upstream.oauth.credentials, field=field, base_dir=config_dir)
    try:
        tokens = parse_oauth_credentials(text.get_secret_value())
    except ValueError as e:
        raise ConfigError(f"{field}: {e}") from None
    store.seed(upstream.host, tokens)


async def read_live(
    upstreams: Sequence[Upstream], store: OAuthStore, config_dir: Path | None, context: ssl.SSLContext
) -> list[UsageReading | str]:
    """A reading, or why there is none, for each OAuth upstream in turn (for `sluice quota --live`).

    A refresh the store starts in the background (a token near expiry, still valid) is waited for before
    returning: a refresh token is single-use, and an answer dropped on the way out would lose its successor.
    """
    results: list[UsageReading | str] = []
    for upstream in upstreams:
        if upstream.oauth is None:
            continue
        try:
            await asyncio.to_thread(seed_store, store, upstream, config_dir)
            token = await store.access_token(upstream.host, refresher(upstream.oauth, context))
            results.append(await asyncio.to_thread(read_usage, upstream, token, context))
        except READ_ERRORS as e:
            results.append(f"{row_host(upstream)} {credential_label(upstream.oauth)}: {scrub(str(e))}")
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    if pending:
        await asyncio.wait(pending, timeout=REFRESH_TIMEOUT_S + 15)
    return results


def note_in_pool(pool: CredentialPool, host: str, reading: UsageReading) -> None:
    """Give the key pool what a reading says of the login's limits (its subscription status and headroom),
    as the headers of an answer would: proxies on this database start new conversations by it."""
    fingerprint = pool.oauth_fingerprint(host)
    if fingerprint is None:
        return
    news = pool.limits_news(host, fingerprint, dict(reading.headers))
    if news is not None:
        pool.record_limits(host, fingerprint, *news)


def last_reading_at(db: Database, host: str, credential: str) -> datetime | None:
    """When the usage endpoint was last read for this credential, by any process sharing the database."""
    row = db.execute(
        "select max(observed_at) from rate_limits where host = ? and credential = ? and call_id = ?",
        (host, credential, SOURCE),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    try:
        moment = datetime.fromisoformat(row[0])
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
