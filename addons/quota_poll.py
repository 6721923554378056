"""Reads each OAuth upstream's subscription usage every `sluice_quota_poll` seconds, off the request path.

Quota then shows in `sluice quota` (and its status line) before any traffic has carried rate-limit headers,
and stays current while none does. The reading comes from Anthropic's OAuth usage endpoint (the one Claude
Code's `/usage` reads; rules/providers/anthropic/oauth_usage.py says what is known of it) and is recorded
through the writer like a call's headers, marked `oauth-usage` (state/quota_live.py).

- Off by default (`sluice_quota_poll=0`). The endpoint rate-limits hard and for long, so the interval is at
  least MIN_POLL_S; a reading another process sharing the database made within the interval counts (a
  restart does not ask again). `SLUICE_TEST_QUOTA_POLL_MIN_S`, an environment variable for the end-to-end
  tests only, lowers that minimum so a test need not wait a minute.
- One asyncio task polls; the HTTP runs in a thread. The access token comes from the credentials part
  (`Credentials.oauth_token`: the pool's OAuth store, refreshed under its single-flight and lease rules).
- The endpoint is called on the configured upstream's host and port only, over TLS verified with
  mitmproxy's upstream trust options (`ssl_verify_upstream_trusted_ca`, `ssl_insecure`), like the
  upstream connections themselves.
- A failure is a warning and a longer wait (doubling up to MAX_BACKOFF_S; a 429 waits at least its
  `retry-after`, else RATE_LIMITED_WAIT_S), never a crash. The task stops on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import timedelta

from mitmproxy import ctx, exceptions

from addons.core import SluiceCore
from addons.credentials import Credentials, upstream_ssl_context
from rules.config import Upstream
from rules.secrets import scrub
from state.oauth_http import UsageRefused
from state.quota_live import READ_ERRORS, credential_label, last_reading_at, read_usage, row_host
from state.ratelimits import format_duration, statusline

log = logging.getLogger("sluice")

MIN_POLL_S = 60
TEST_MIN_ENV = "SLUICE_TEST_QUOTA_POLL_MIN_S"
MAX_BACKOFF_S = 3600.0
# The endpoint's own 429 often names no time and is reported to last up to an hour: do not press it.
RATE_LIMITED_WAIT_S = 600.0


def minimum_interval() -> float:
    """MIN_POLL_S, unless the end-to-end tests lowered it (TEST_MIN_ENV)."""
    text = os.environ.get(TEST_MIN_ENV)
    if text is None:
        return MIN_POLL_S
    try:
        return max(0.0, float(text))
    except ValueError:
        raise exceptions.OptionsError(f"{TEST_MIN_ENV}: not a number of seconds: {text!r}") from None


def next_wait(interval: float, previous_s: float, error: Exception) -> float:
    """Seconds until the next try after `error`: double the previous wait (at least the interval, at most
    MAX_BACKOFF_S); a 429 waits at least what it asked, else RATE_LIMITED_WAIT_S."""
    wait = min(MAX_BACKOFF_S, max(interval, previous_s * 2))
    if isinstance(error, UsageRefused) and error.status == 429:
        wait = max(wait, error.retry_after_s if error.retry_after_s is not None else RATE_LIMITED_WAIT_S)
    return wait


class QuotaPoll:
    def __init__(self, core: SluiceCore, credentials: Credentials) -> None:
        self.core = core
        self.credentials = credentials
        self.interval = 0.0
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._waits: dict[str, float] = {}  # per upstream host: the last backoff, while failing
        core.shutdown_hooks.append(self.stop)  # before the writer drains

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "sluice_quota_poll",
            int,
            0,
            f"Seconds between reads of each OAuth upstream's subscription usage (the endpoint Claude Code's "
            f"/usage reads), recorded like rate-limit headers; 0 (the default) does not poll. At least "
            f"{MIN_POLL_S}: the endpoint rate-limits hard.",
        )

    def configure(self, updated: set[str]) -> None:
        if "sluice_quota_poll" in updated:
            value = ctx.options.sluice_quota_poll
            minimum = minimum_interval()
            if value < 0 or 0 < value < minimum:
                raise exceptions.OptionsError(
                    f"sluice_quota_poll: {value} seconds; 0 turns polling off, otherwise at least "
                    f"{minimum:g} (the usage endpoint rate-limits hard)"
                )
            self.interval = float(value)
        if {"sluice_quota_poll", "sluice_config"} & updated and self._running:
            self._start()

    def running(self) -> None:
        self._running = True
        self._start()

    def done(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _start(self) -> None:
        self.stop()
        # A minted token has no subscription to read.
        upstreams = [u for u in self.core.config.upstreams if u.oauth is not None and u.oauth.mint is None]
        if self.interval <= 0 or not upstreams:
            return
        self._waits.clear()
        self._task = asyncio.get_running_loop().create_task(self._poll(upstreams), name="sluice quota poll")
        log.info(
            "sluice: reading the subscription usage of %s every %s",
            ", ".join(row_host(u) for u in upstreams),
            format_duration(timedelta(seconds=self.interval)),
        )

    async def _poll(self, upstreams: list[Upstream]) -> None:
        due = {u.host: await self._first_due(u) for u in upstreams}
        while True:
            for upstream in upstreams:
                if due[upstream.host] <= time.time():
                    wait = await self._read(upstream)  # counted from when the read ended
                    due[upstream.host] = time.time() + wait
            await asyncio.sleep(max(0.0, min(due.values()) - time.time()))

    async def _first_due(self, upstream: Upstream) -> float:
        """Now, unless a reading within the interval is in the database already (another process's, or
        this one's before a restart)."""
        assert upstream.oauth is not None  # only OAuth upstreams are polled
        host, credential = row_host(upstream), credential_label(upstream.oauth)

        store = self.core.store
        if store is None:
            return time.time()

        def last() -> float | None:
            with store.reading() as db:
                moment = last_reading_at(db, host, credential)
            return moment.timestamp() if moment is not None else None

        try:
            seen = await asyncio.to_thread(last)
        except Exception as e:  # the database unreadable now: poll anyway, the writer will wait it out
            log.warning("sluice: could not look up the last usage reading of %s: %s", host, e)
            return time.time()
        return time.time() if seen is None else seen + self.interval

    async def _read(self, upstream: Upstream) -> float:
        """Read and record one upstream's usage; the seconds until its next read."""
        assert upstream.oauth is not None
        name = f"{row_host(upstream)} {credential_label(upstream.oauth)}"
        try:
            token = await self.credentials.oauth_token(upstream.host)
            reading = await asyncio.to_thread(read_usage, upstream, token, upstream_ssl_context())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # READ_ERRORS expected; anything else is a bug, but still not a crash
            wait = next_wait(self.interval, self._waits.get(upstream.host, 0.0), e)
            self._waits[upstream.host] = wait
            report = log.warning if isinstance(e, READ_ERRORS) else log.exception
            report(
                "sluice: reading the subscription usage of %s failed: %s; next try in %s",
                name,
                scrub(str(e)) or type(e).__name__,
                format_duration(timedelta(seconds=wait)),
            )
            return wait
        self._waits.pop(upstream.host, None)
        if self.core.writer is not None:
            self.core.writer.put(reading.record())
        self.credentials.note_oauth_limits(upstream.host, dict(reading.headers))
        log.info(
            "sluice: subscription usage of %s: %s", name, statusline(reading.summary, reading.observed_at)
        )
        return self.interval
