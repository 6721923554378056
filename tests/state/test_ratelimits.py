from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from state.ratelimits import (
    Limit,
    Overage,
    QuotaSummary,
    RawHeader,
    Unified,
    Window,
    format_duration,
    format_percent,
    statusline,
    summarize,
)

OBSERVED = datetime(2026, 11, 23, 3, 45, 50, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return OBSERVED + timedelta(seconds=seconds)


def epoch(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def test_summarize_anthropic_standard_limits() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-11-23T03:46:02Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "38000",
        "anthropic-ratelimit-tokens-reset": "2026-11-23T03:46:10Z",
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "29000",
        "anthropic-ratelimit-input-tokens-reset": "2026-11-23T03:46:05Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "8000",
        "anthropic-ratelimit-output-tokens-reset": "2026-11-23T03:45:51Z",
    }
    summary = summarize(headers, OBSERVED)
    assert summary == QuotaSummary(
        observed_at=OBSERVED,
        limits=(
            Limit("anthropic", "requests", 50, 49, datetime(2026, 11, 23, 3, 46, 2, tzinfo=UTC), OBSERVED),
            Limit(
                "anthropic", "tokens", 40000, 38000, datetime(2026, 11, 23, 3, 46, 10, tzinfo=UTC), OBSERVED
            ),
            Limit(
                "anthropic",
                "input-tokens",
                30000,
                29000,
                datetime(2026, 11, 23, 3, 46, 5, tzinfo=UTC),
                OBSERVED,
            ),
            Limit(
                "anthropic",
                "output-tokens",
                8000,
                8000,
                datetime(2026, 11, 23, 3, 45, 51, tzinfo=UTC),
                OBSERVED,
            ),
        ),
        unified=None,
        retry_at=None,
        other=(),
    )
    assert summary.limits[1].used_fraction == 0.05


def test_summarize_anthropic_unified_family() -> None:
    five_hours = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    seven_days = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    headers = {
        "anthropic-ratelimit-unified-status": "allowed_warning",
        "anthropic-ratelimit-unified-reset": epoch(five_hours),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-status": "allowed_warning",
        "anthropic-ratelimit-unified-5h-utilization": "0.42",
        "anthropic-ratelimit-unified-5h-reset": epoch(five_hours),
        "anthropic-ratelimit-unified-5h-surpassed-threshold": "0.4",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-utilization": "0.13",
        "anthropic-ratelimit-unified-7d-reset": epoch(seven_days),
        "anthropic-ratelimit-unified-7d_opus-utilization": "0.9",
        "anthropic-ratelimit-unified-7d_opus-reset": epoch(seven_days),
        "anthropic-ratelimit-unified-7d_opus-status": "allowed",
        "anthropic-ratelimit-unified-7d-sonnet-utilization": "0.05",
        "anthropic-ratelimit-unified-fallback": "available",
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-reset": epoch(seven_days),
        "anthropic-ratelimit-unified-overage-utilization": "0",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    }
    summary = summarize(headers, OBSERVED)
    assert summary.limits == ()
    assert summary.other == ()
    assert summary.unified == Unified(
        status="allowed_warning",
        reset_at=five_hours,
        representative_claim="five_hour",
        fallback="available",
        fallback_percentage=0.5,
        windows=(
            Window("5h", "allowed_warning", 0.42, 0.4, five_hours, OBSERVED),
            Window("7d", "allowed", 0.13, None, seven_days, OBSERVED),
            Window("7d-sonnet", None, 0.05, None, None, OBSERVED),
            Window("7d_opus", "allowed", 0.9, None, seven_days, OBSERVED),
        ),
        overage=Overage("rejected", 0.0, seven_days, "org_level_disabled", OBSERVED),
        observed_at=OBSERVED,
    )
    assert summary.unified.window("7d_opus") == summary.unified.windows[3]


def test_summarize_openai_durations_count_from_the_observation() -> None:
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    summary = summarize(headers, OBSERVED)
    assert summary.limits == (
        Limit("openai", "requests", 60, 59, at(1), OBSERVED),
        Limit("openai", "tokens", 150000, 149984, at(360), OBSERVED),
    )
    assert summary.unified is None


def test_summarize_uses_each_headers_own_observation_time() -> None:
    earlier = OBSERVED - timedelta(hours=1)
    headers = {
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6m0s",
        "anthropic-ratelimit-unified-7d_opus-utilization": "0.5",
    }
    seen_at = {
        "X-RateLimit-Reset-Tokens": earlier,
        "anthropic-ratelimit-unified-7d_opus-utilization": earlier,
    }
    summary = summarize(headers, OBSERVED, seen_at=seen_at)
    assert summary.limits[0].reset_at == at(1)
    assert summary.limits[1].reset_at == earlier + timedelta(minutes=6)
    assert summary.limits[1].observed_at == earlier
    assert summary.unified is not None
    assert summary.unified.windows[0].observed_at == earlier
    assert summary.observed_at == OBSERVED


def test_summarize_keeps_unknown_and_unparsable_headers_raw() -> None:
    headers = {
        "Anthropic-RateLimit-Requests-Limit": "50",
        "anthropic-ratelimit-requests-remaining": "many",
        "anthropic-ratelimit-unified-upgrade-paths": "max_20x",
        "anthropic-ratelimit-unified-5h-utilization": "lots",
        "anthropic-ratelimit-unified-overage-color": "red",
        "x-ratelimit-reset-tokens": "soon",
        "x-should-retry": "true",
        "retry-after": "30",
    }
    summary = summarize(headers, OBSERVED)
    assert summary.limits == (Limit("anthropic", "requests", 50, None, None, OBSERVED),)
    assert summary.unified is None
    assert summary.retry_at == at(30)
    assert summary.other == (
        RawHeader("anthropic-ratelimit-requests-remaining", "many", OBSERVED),
        RawHeader("anthropic-ratelimit-unified-5h-utilization", "lots", OBSERVED),
        RawHeader("anthropic-ratelimit-unified-overage-color", "red", OBSERVED),
        RawHeader("anthropic-ratelimit-unified-upgrade-paths", "max_20x", OBSERVED),
        RawHeader("x-ratelimit-reset-tokens", "soon", OBSERVED),
        RawHeader("x-should-retry", "true", OBSERVED),
    )


def test_summarize_prefers_retry_after_ms() -> None:
    summary = summarize({"retry-after": "2", "retry-after-ms": "1500"}, OBSERVED)
    assert summary.retry_at == at(1.5)


def test_summarize_nothing() -> None:
    summary = summarize({}, OBSERVED)
    assert summary.is_empty
    assert summary.to_dict() == {
        "observed_at": "2026-11-23T03:45:50+00:00",
        "limits": [],
        "unified": None,
        "retry_at": None,
        "other": [],
    }


def test_to_dict_is_json_ready() -> None:
    headers = {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.42",
        "anthropic-ratelimit-unified-5h-reset": "1795000000",
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-reset-requests": "1s",
    }
    assert summarize(headers, OBSERVED).to_dict() == {
        "observed_at": "2026-11-23T03:45:50+00:00",
        "limits": [
            {
                "provider": "openai",
                "name": "requests",
                "limit": 60,
                "remaining": None,
                "reset_at": "2026-11-23T03:45:51+00:00",
                "observed_at": "2026-11-23T03:45:50+00:00",
            }
        ],
        "unified": {
            "status": "allowed",
            "reset_at": None,
            "representative_claim": None,
            "fallback": None,
            "fallback_percentage": None,
            "windows": [
                {
                    "name": "5h",
                    "status": None,
                    "utilization": 0.42,
                    "surpassed_threshold": None,
                    "reset_at": "2026-11-18T11:06:40+00:00",
                    "observed_at": "2026-11-23T03:45:50+00:00",
                }
            ],
            "overage": None,
            "observed_at": "2026-11-23T03:45:50+00:00",
        },
        "retry_at": None,
        "other": [],
    }


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(milliseconds=450), "450ms"),
        (timedelta(seconds=12), "12s"),
        (timedelta(minutes=6), "6m"),
        (timedelta(minutes=6, seconds=5), "6m5s"),
        (timedelta(hours=2, minutes=10, seconds=59), "2h10m"),
        (timedelta(hours=2, seconds=5), "2h"),
        (timedelta(days=1, hours=1, minutes=1), "1d1h"),
        (timedelta(days=3), "3d"),
        (timedelta(seconds=-90), "1m30s"),
    ],
)
def test_format_duration(delta: timedelta, expected: str) -> None:
    assert format_duration(delta) == expected


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0, "0%"), (0.001, "<1%"), (0.42, "42%"), (0.125, "13%"), (1.07, "107%")]
)
def test_format_percent(fraction: float, expected: str) -> None:
    assert format_percent(fraction) == expected


def _unified(**headers: str) -> dict[str, str]:
    return {f"anthropic-ratelimit-unified-{name.replace('_', '-')}": value for name, value in headers.items()}


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        pytest.param(
            {
                **_unified(status="allowed", reset=epoch(at(7800))),
                "anthropic-ratelimit-unified-5h-utilization": "0.42",
                "anthropic-ratelimit-unified-5h-reset": epoch(at(7800)),
                "anthropic-ratelimit-unified-7d-utilization": "0.13",
                "anthropic-ratelimit-unified-7d-reset": epoch(at(400000)),
            },
            OBSERVED,
            "5h 42% · 7d 13% · resets 2h10m",
            id="subscription",
        ),
        pytest.param(
            {
                **_unified(status="rejected", reset=epoch(at(3600))),
                "anthropic-ratelimit-unified-5h-utilization": "1.0",
                "anthropic-ratelimit-unified-5h-reset": epoch(at(3600)),
                "retry-after": "3600",
            },
            OBSERVED + timedelta(minutes=5),
            "rejected · 5h 100% · retry in 55m · resets 55m · seen 5m ago",
            id="rejected-and-old",
        ),
        pytest.param(
            {
                "anthropic-ratelimit-unified-5h-utilization": "0.9",
                "anthropic-ratelimit-unified-5h-reset": epoch(at(60)),
                "anthropic-ratelimit-unified-7d-utilization": "0.5",
                "anthropic-ratelimit-unified-7d-reset": epoch(at(86400)),
            },
            OBSERVED + timedelta(minutes=2),
            "5h reset · 7d 50% · resets 23h58m · seen 2m ago",
            id="window-reset-since-seen",
        ),
        pytest.param(
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": "2026-11-23T03:46:02Z",
                "anthropic-ratelimit-tokens-limit": "40000",
                "anthropic-ratelimit-tokens-remaining": "10000",
                "anthropic-ratelimit-tokens-reset": "2026-11-23T03:46:10Z",
            },
            OBSERVED,
            "req 2% · tok 75% · resets 20s",
            id="api-key",
        ),
        pytest.param(
            {
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-limit-tokens": "150000",
                "x-ratelimit-remaining-tokens": "149984",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            OBSERVED,
            "req 100% · tok <1% · resets 1s",
            id="openai",
        ),
        pytest.param({"x-something-ratelimit": "1"}, OBSERVED, "no rate limits seen", id="nothing-known"),
    ],
)
def test_statusline(headers: dict[str, str], now: datetime, expected: str) -> None:
    assert statusline(summarize(headers, OBSERVED), now) == expected
