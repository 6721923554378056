"""The answer of Anthropic's OAuth usage endpoint, written as the rate-limit headers it stands for.

`GET https://api.anthropic.com/api/oauth/usage` is what Claude Code's `/usage` reads for a subscription
login. It is not documented by Anthropic; what follows was learned from public reverse-engineering (Claude
Code's own requests and the error reports users posted of it) and may change without notice:

- request: `Authorization: Bearer <OAuth access token>`, `anthropic-beta: oauth-2025-04-20`,
  `accept: application/json`; a token without the `user:profile` scope is refused with 403
  (`permission_error`, "OAuth token does not meet scope requirement user:profile");
- the endpoint is rate limited on its own, harshly: 429 `rate_limit_error` "Rate limited. Please try again
  later." after a few calls, for up to an hour;
- answer: one object per window, `{"utilization": <PERCENT, 0-100>, "resets_at": <ISO 8601 or null>}`,
  under `five_hour`, `seven_day`, `seven_day_opus`, `seven_day_sonnet`, `seven_day_oauth_apps` (a window
  the account does not have is null), and `extra_usage`: `{"is_enabled", "monthly_limit" and
  "used_credits" (cents, or null), "utilization" (percent, or null)}`.

The rate-limit headers (`anthropic-ratelimit-unified-*`) say the same things with a utilization that is a
0..1 FRACTION. This module writes the answer as those headers, percent turned into fraction, so that the
reading is stored, merged and shown exactly like headers seen on traffic (state/ratelimits.py reads both).
A window `<count>_<unit>[_<scope>]` becomes `<count><h|d>[_<scope>]` (`five_hour` → `5h`, `seven_day_opus`
→ `7d_opus`). Whatever does not fit — an unknown key, a window of another shape, a value that does not
parse — is kept as a raw `oauth-usage.<key>[.<field>]` entry with the value as it came: shown, never
dropped. Pure: JSON data in, (name, value) pairs out.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from decimal import Decimal

from rules.providers.anthropic import ANTHROPIC, OAUTH_BETA

USAGE_PATH = "/api/oauth/usage"
USAGE_BETA = OAUTH_BETA  # the same beta flag every OAuth-authenticated Anthropic request carries
SCOPE_NEEDED = "user:profile"
# Stored in `rate_limits.call_id` of every row read from the endpoint, to tell them from headers of calls.
SOURCE = "oauth-usage"
RAW_PREFIX = "oauth-usage."

_UNIFIED = ANTHROPIC.window_prefix
_WINDOW_KEY = re.compile(r"(?P<count>\d+|[a-z]+)_(?P<unit>hour|day|week)s?(?:_(?P<scope>[a-z0-9_]+))?")
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "ten": 10,
    "twelve": 12,
    "fourteen": 14,
    "thirty": 30,
}
_UNIT_HOURS = {"hour": (1, "h"), "day": (1, "d"), "week": (7, "d")}
# Bounds on what one answer may add to the database: entries, and characters of a raw value or key.
MAX_ENTRIES = 64
MAX_VALUE_CHARS = 200
MAX_KEY_CHARS = 64


def percent_to_fraction(percent: object) -> str | None:
    """A utilization in percent (the endpoint's 61.0) as the 0..1 fraction headers carry ("0.61"), exact in
    decimal; None when `percent` is not a finite, non-negative number. Over 100 stays over 1 (over the
    limit)."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        return None
    if not math.isfinite(percent) or percent < 0:
        return None
    fraction = Decimal(repr(percent)) / 100
    return format(fraction.normalize(), "f")


def window_name(key: str) -> str | None:
    """The header spelling of a window key: `five_hour` → `5h`, `seven_day_opus` → `7d_opus`; None when
    `key` is not `<count>_<hour|day|week>[_<scope>]`."""
    match = _WINDOW_KEY.fullmatch(key)
    if match is None:
        return None
    count_text = match["count"]
    count = int(count_text) if count_text.isdigit() else _NUMBER_WORDS.get(count_text)
    if not count:
        return None
    factor, unit = _UNIT_HOURS[match["unit"]]
    scope = f"_{match['scope']}" if match["scope"] else ""
    return f"{count * factor}{unit}{scope}"


def headers_from_usage(answer: object) -> list[tuple[str, str]]:
    """The usage endpoint's answer as (rate-limit header name, value) pairs (see the module docstring).

    Raises ValueError when `answer` is not a JSON object (the endpoint answered something else). Otherwise
    fails open: whatever cannot be placed is kept raw, and at most MAX_ENTRIES pairs come out.
    """
    if not isinstance(answer, dict):
        raise ValueError(f"the usage answer is a JSON {type(answer).__name__}, not an object")
    pairs: list[tuple[str, str]] = []
    for raw_key, value in answer.items():
        key = _safe_key(str(raw_key))
        if value is None:
            continue  # a window this account does not have
        if key == "extra_usage" and isinstance(value, dict):
            pairs += _extra_usage(value)
        elif (name := window_name(key)) is not None and isinstance(value, dict):
            pairs += _window(key, name, value)
        else:
            pairs.append((RAW_PREFIX + key, _raw(value)))
    if len(pairs) > MAX_ENTRIES:
        left_out = len(pairs) - MAX_ENTRIES + 1
        pairs = [*pairs[: MAX_ENTRIES - 1], (RAW_PREFIX + "left_out", f"{left_out} more entries")]
    return pairs


def _window(key: str, name: str, fields: dict[str, object]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for field, value in fields.items():
        if field == "utilization" and (fraction := percent_to_fraction(value)) is not None:
            pairs.append((f"{_UNIFIED}{name}-utilization", fraction))
        elif field == "resets_at" and _is_time(value):
            pairs.append((f"{_UNIFIED}{name}-reset", str(value)))
        elif value is not None:
            pairs.append((f"{RAW_PREFIX}{key}.{_safe_key(field)}", _raw(value)))
    return pairs


def _extra_usage(fields: dict[str, object]) -> list[tuple[str, str]]:
    """`extra_usage` is what the headers call overage: its utilization is a percent too; its amounts are
    cents, kept raw in dollars (`monthly_limit_usd`)."""
    pairs: list[tuple[str, str]] = []
    for field, value in fields.items():
        if value is None:
            continue
        if field == "utilization" and (fraction := percent_to_fraction(value)) is not None:
            pairs.append((f"{_UNIFIED}overage-utilization", fraction))
        elif field in ("monthly_limit", "used_credits") and (cents := _cents(value)) is not None:
            pairs.append((f"{RAW_PREFIX}extra_usage.{field}_usd", f"{Decimal(cents) / 100:.2f}"))
        else:
            pairs.append((f"{RAW_PREFIX}extra_usage.{_safe_key(field)}", _raw(value)))
    return pairs


def _is_time(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 40:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _cents(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and float(value).is_integer() else None


def _safe_key(key: str) -> str:
    """A key fit for a header-like name: lower case, `[a-z0-9_]` only, bounded."""
    return re.sub(r"[^a-z0-9_]", "_", key.lower())[:MAX_KEY_CHARS] or "_"


def _raw(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"
