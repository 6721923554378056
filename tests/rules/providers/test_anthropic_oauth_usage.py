from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rules.providers.anthropic.oauth_usage import (
    MAX_ENTRIES,
    MAX_VALUE_CHARS,
    headers_from_usage,
    percent_to_fraction,
    window_name,
)
from state.ratelimits import statusline, summarize

AT = datetime(2026, 1, 28, 3, 0, tzinfo=UTC)

# The answer's shape as public reverse-engineering of Claude Code's `/usage` reports it (utilization in
# percent, resets with microseconds, absent windows null); values made up.
ANSWER: dict[str, Any] = {
    "five_hour": {"utilization": 61.0, "resets_at": "2026-01-28T07:59:59.571404+00:00"},
    "seven_day": {"utilization": 13, "resets_at": "2026-02-01T03:59:59.571428+00:00"},
    "seven_day_oauth_apps": None,
    "seven_day_opus": None,
    "seven_day_sonnet": {"utilization": 4.0, "resets_at": None},
    "extra_usage": {"is_enabled": True, "monthly_limit": 5000, "used_credits": 1234, "utilization": 24.68},
}


@pytest.mark.parametrize(
    ("percent", "fraction"),
    [
        (61.0, "0.61"),
        (61, "0.61"),
        (0, "0"),
        (0.0, "0"),
        (100, "1"),
        (33.3, "0.333"),  # exact in decimal: not 0.33299999999999996
        (0.5, "0.005"),
        (104.2, "1.042"),  # over the limit stays over 1
        (1e-7, "0.000000001"),
    ],
)
def test_a_percent_becomes_the_fraction_headers_carry(percent: float, fraction: str) -> None:
    assert percent_to_fraction(percent) == fraction


@pytest.mark.parametrize("value", [None, True, "61", -1, float("nan"), float("inf"), [61]])
def test_what_is_not_a_percent_has_no_fraction(value: object) -> None:
    assert percent_to_fraction(value) is None


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("five_hour", "5h"),
        ("seven_day", "7d"),
        ("seven_day_opus", "7d_opus"),
        ("seven_day_oauth_apps", "7d_oauth_apps"),
        ("one_week", "7d"),
        ("thirty_days", "30d"),
        ("24_hours_haiku", "24h_haiku"),
        ("extra_usage", None),
        ("eleventy_day", None),
        ("zero_hour", None),
        ("five_minute", None),
    ],
)
def test_window_keys_get_the_header_spelling(key: str, name: str | None) -> None:
    assert window_name(key) == name


def test_the_answer_becomes_unified_headers_in_fractions() -> None:
    assert headers_from_usage(ANSWER) == [
        ("anthropic-ratelimit-unified-5h-utilization", "0.61"),
        ("anthropic-ratelimit-unified-5h-reset", "2026-01-28T07:59:59.571404+00:00"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.13"),
        ("anthropic-ratelimit-unified-7d-reset", "2026-02-01T03:59:59.571428+00:00"),
        ("anthropic-ratelimit-unified-7d_sonnet-utilization", "0.04"),
        ("oauth-usage.extra_usage.is_enabled", "true"),
        ("oauth-usage.extra_usage.monthly_limit_usd", "50.00"),
        ("oauth-usage.extra_usage.used_credits_usd", "12.34"),
        ("anthropic-ratelimit-unified-overage-utilization", "0.2468"),
    ]


def test_the_answer_reads_as_the_windows_sluice_quota_shows() -> None:
    summary = summarize(dict(headers_from_usage(ANSWER)), AT)

    unified = summary.unified
    assert unified is not None
    assert [(w.name, w.utilization) for w in unified.windows] == [
        ("5h", 0.61),
        ("7d", 0.13),
        ("7d_sonnet", 0.04),
    ]
    five_hour = unified.window("5h")
    assert five_hour is not None
    assert five_hour.reset_at == datetime(2026, 1, 28, 7, 59, 59, 571404, tzinfo=UTC)
    assert unified.overage is not None and unified.overage.utilization == 0.2468
    assert {raw.name: raw.value for raw in summary.other} == {
        "oauth-usage.extra_usage.is_enabled": "true",
        "oauth-usage.extra_usage.monthly_limit_usd": "50.00",
        "oauth-usage.extra_usage.used_credits_usd": "12.34",
    }
    assert statusline(summary, AT) == "5h 61% · 7d 13% · 7d_sonnet 4% · overage 25% · resets 4h59m"


def test_unknown_windows_and_fields_are_kept_raw_never_dropped() -> None:
    answer = {
        "five_hour": {"utilization": 10, "resets_at": "not a time", "limit_kind": "session"},
        "seven_day_haiku": {"utilization": 2.5, "resets_at": None},  # a new scoped window: placed
        "monthly": {"utilization": 40, "resets_at": None},  # a window of another shape: kept raw
        "tier": "max_20x",
        "Weird Key!": [1, {"b": 2}],
        "seven_day": {"utilization": "61%"},
    }

    pairs = headers_from_usage(answer)

    assert pairs == [
        ("anthropic-ratelimit-unified-5h-utilization", "0.1"),
        ("oauth-usage.five_hour.resets_at", "not a time"),
        ("oauth-usage.five_hour.limit_kind", "session"),
        ("anthropic-ratelimit-unified-7d_haiku-utilization", "0.025"),
        ("oauth-usage.monthly", '{"resets_at":null,"utilization":40}'),
        ("oauth-usage.tier", "max_20x"),
        ("oauth-usage.weird_key_", '[1,{"b":2}]'),
        ("oauth-usage.seven_day.utilization", "61%"),
    ]
    summary = summarize(dict(pairs), AT)
    assert summary.unified is not None
    assert [w.name for w in summary.unified.windows] == ["5h", "7d_haiku"]
    assert {(raw.name, raw.value) for raw in summary.other} == {p for p in pairs if p[0].startswith("oauth")}


def test_an_answer_that_is_not_an_object_is_an_error() -> None:
    with pytest.raises(ValueError, match="the usage answer is a JSON list, not an object"):
        headers_from_usage([ANSWER])


def test_a_huge_answer_is_bounded() -> None:
    answer = {f"key_{n}": "x" * 10_000 for n in range(500)}

    pairs = headers_from_usage(answer)

    assert len(pairs) == MAX_ENTRIES
    assert pairs[-1] == ("oauth-usage.left_out", f"{500 - MAX_ENTRIES + 1} more entries")
    assert max(len(value) for _, value in pairs) == MAX_VALUE_CHARS


def test_control_characters_in_raw_values_are_not_kept() -> None:
    [(name, value)] = headers_from_usage(json.loads('{"note": "a\\r\\nForged: 1\\u001b[2J"}'))
    assert (name, value) == ("oauth-usage.note", "a??Forged: 1?[2J")
