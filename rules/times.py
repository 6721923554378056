"""Times as providers write them: Go-style durations, resets in four spellings. Pure, no clock read here.

Shared by the rate-limit view (state/ratelimits.py), the pool's reading of a provider's answer
(rules/provider_answers.py) and `sluice usage --since 7d`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime

# A bare number below this is a count of seconds from the observation (`retry-after: 30`, the resets of some
# OpenAI-compatible providers); at or above it, epoch seconds (Anthropic's unified resets). 1e9 s is 31 years:
# no delay is that long, and no epoch reset is before 2001.
EPOCH_THRESHOLD_SECONDS = 1_000_000_000

# Go's time.Duration text (https://pkg.go.dev/time#ParseDuration), which OpenAI uses for its resets, plus days
# and weeks so that the same parser reads `sluice usage --since 7d`.
_DURATION_UNITS_US: dict[str, Decimal] = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),  # MICRO SIGN, as Go prints it
    "μs": Decimal(1),  # GREEK SMALL LETTER MU
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
    "d": Decimal(86_400_000_000),
    "w": Decimal(604_800_000_000),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
# RFC 3339 §5.6, with the lower-case `t`/`z` and the space separator that section allows.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (`6m0s`, `12ms`, `1h2m3.5s`; also `d` and `w`). Raises ValueError."""
    value = text.strip()
    if value == "0":  # Go prints a zero duration without a unit
        return timedelta(0)
    if not _DURATION.fullmatch(value):
        raise ValueError(f"not a duration: {text!r} (expected something like 6m0s, 12ms, 1h2m3.5s, 7d)")
    micros = sum(
        (Decimal(number) * _DURATION_UNITS_US[unit] for number, unit in _DURATION_PART.findall(value)),
        Decimal(0),
    )
    try:
        return timedelta(microseconds=int(micros.to_integral_value()))
    except OverflowError as e:
        raise ValueError(f"duration out of range: {text!r}") from e


def parse_reset(value: str, observed_at: datetime) -> datetime | None:
    """When a limit resets, as an aware UTC datetime; None if `value` is none of the forms below.

    - RFC 3339 (`2026-11-23T03:46:02Z`), as Anthropic's standard limits send;
    - a bare number: epoch seconds (Anthropic's unified limits) when at least EPOCH_THRESHOLD_SECONDS,
      otherwise seconds after `observed_at` (`retry-after`);
    - a Go-style duration (`6m0s`, `12ms`), as OpenAI sends, counted from `observed_at`;
    - an HTTP-date (RFC 9110 §5.6.7), which `retry-after` may carry.
    """
    text = value.strip()
    base = as_utc(observed_at)
    try:
        if _RFC3339.fullmatch(text):
            normalized = text.upper().replace("Z", "+00:00")
            return as_utc(datetime.fromisoformat(normalized))
        if _NUMBER.fullmatch(text):
            seconds = Decimal(text)
            if seconds >= EPOCH_THRESHOLD_SECONDS:
                return datetime.fromtimestamp(float(seconds), UTC)
            return base + timedelta(microseconds=int((seconds * 1_000_000).to_integral_value()))
        if _DURATION.fullmatch(text):
            return base + parse_duration(text)
        if "," in text and text[:3].isalpha():
            return as_utc(parsedate_to_datetime(text))
    except (ValueError, OverflowError, OSError, InvalidOperation):
        return None
    return None


def as_utc(moment: datetime) -> datetime:
    """Aware datetimes converted to UTC; naive ones taken to be UTC already (as sluice stores them)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
