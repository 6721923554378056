from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.core import SluiceCore
from addons.credentials import Credentials
from addons.quota_poll import (
    MAX_BACKOFF_S,
    MIN_POLL_S,
    RATE_LIMITED_WAIT_S,
    TEST_MIN_ENV,
    QuotaPoll,
    next_wait,
)
from state.oauth_http import UsageRefused


def _poll() -> QuotaPoll:
    core = SluiceCore()
    return QuotaPoll(core, Credentials(core))


def test_polling_is_off_by_default() -> None:
    poll = _poll()
    with taddons.context(poll) as tctx:
        assert tctx.options.sluice_quota_poll == 0
        assert poll.interval == 0


@pytest.mark.parametrize("seconds", [-1, 1, MIN_POLL_S - 1])
def test_an_interval_below_the_minimum_is_refused(seconds: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_MIN_ENV, raising=False)
    poll = _poll()
    refused = pytest.raises(exceptions.OptionsError, match=f"at least {MIN_POLL_S}")
    with taddons.context(poll) as tctx, refused:
        tctx.configure(poll, sluice_quota_poll=seconds)


def test_the_tests_may_lower_the_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_MIN_ENV, "1")
    poll = _poll()
    with taddons.context(poll) as tctx:
        tctx.configure(poll, sluice_quota_poll=1)
        assert poll.interval == 1


def test_a_minimum_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_MIN_ENV, "soon")
    poll = _poll()
    with taddons.context(poll) as tctx, pytest.raises(exceptions.OptionsError, match=TEST_MIN_ENV):
        tctx.configure(poll, sluice_quota_poll=300)


@pytest.mark.parametrize(
    ("previous", "error", "wait"),
    [
        (0, OSError("connection refused"), 300),  # the first failure waits an interval
        (300, OSError("connection refused"), 600),  # then doubles
        (3000, OSError("connection refused"), MAX_BACKOFF_S),  # up to a ceiling
        (0, UsageRefused("rate limited", 429, retry_after_s=1200), 1200),  # a 429's own wait
        (0, UsageRefused("rate limited", 429, retry_after_s=5), 300),  # never under the interval
        (0, UsageRefused("rate limited", 429), RATE_LIMITED_WAIT_S),  # a 429 that names no time
        (0, UsageRefused("no scope", 403), 300),
    ],
)
def test_failures_back_off(previous: float, error: Exception, wait: float) -> None:
    assert next_wait(300, previous, error) == wait
