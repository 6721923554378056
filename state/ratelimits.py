"""Providers' rate-limit headers, parsed into one normalized view.

Pure: header values and the time they were observed go in, frozen dataclasses come out. Nothing here reads a
clock or a database; callers pass `observed_at` (when the response carried the headers) and `now`.

Header families are the providers' own (rules/providers: a `Provider`'s `window_prefix` and
`counted_limits`):

- counted limits, each a limit, what remains of it and when it resets (Anthropic's
  `anthropic-ratelimit-tokens-remaining`, reset as RFC 3339; OpenAI's `x-ratelimit-remaining-tokens`, reset
  as a Go-style duration such as `6m0s` or `1h2m3.5s`);
- subscription windows (Anthropic's `anthropic-ratelimit-unified-*`): an overall status and reset (epoch
  seconds), a representative claim, windows named by their length (`5h`, `7d`) or scoped to a model (`7d_opus`
  and the hyphenated `7d-opus`), each with its utilization as a 0..1 fraction, fallback and overage;
- `retry-after-ms` and `retry-after`, which any provider may send.

A header that belongs to no family, or whose value does not parse, is kept raw in `QuotaSummary.other`:
a provider's next header is shown, never dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rules.providers import counted_limit_header, window_header
from rules.times import as_utc, parse_reset

# Windows are named by their length, optionally scoped to a model: `5h`, `7d`, `7d_opus`, `7d-opus`.
_UNIFIED_WINDOW = re.compile(r"(?P<count>\d+)(?P<unit>[hd])(?:[_-][a-z0-9_.-]+)?")
_LIMIT_ORDER = ("requests", "tokens", "input-tokens", "output-tokens")

# Parses one header value; None when it does not parse.
type _Parser = Callable[[str], object]


@dataclass(frozen=True)
class Limit:
    """One counted limit (Anthropic standard or OpenAI): `remaining` of `limit` left until `reset_at`."""

    provider: str
    name: str
    limit: int | None
    remaining: int | None
    reset_at: datetime | None
    observed_at: datetime

    @property
    def used_fraction(self) -> float | None:
        if self.limit is None or self.remaining is None or self.limit <= 0:
            return None
        return (self.limit - self.remaining) / self.limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "name": self.name,
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_at": _iso(self.reset_at),
            "observed_at": _iso(self.observed_at),
        }


@dataclass(frozen=True)
class Window:
    """A subscription window (`5h`, `7d`, `7d_opus`, ...): utilization is a fraction, 1.0 meaning used up."""

    name: str
    status: str | None
    utilization: float | None
    surpassed_threshold: float | None
    reset_at: datetime | None
    observed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "utilization": self.utilization,
            "surpassed_threshold": self.surpassed_threshold,
            "reset_at": _iso(self.reset_at),
            "observed_at": _iso(self.observed_at),
        }


@dataclass(frozen=True)
class Overage:
    """Usage beyond the subscription's windows ("extra usage"), and why it is off when it is."""

    status: str | None
    utilization: float | None
    reset_at: datetime | None
    disabled_reason: str | None
    observed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "utilization": self.utilization,
            "reset_at": _iso(self.reset_at),
            "disabled_reason": self.disabled_reason,
            "observed_at": _iso(self.observed_at),
        }


@dataclass(frozen=True)
class Unified:
    """Anthropic's subscription limits: `status` is allowed, allowed_warning or rejected."""

    status: str | None
    reset_at: datetime | None
    representative_claim: str | None
    fallback: str | None
    fallback_percentage: float | None
    windows: tuple[Window, ...]
    overage: Overage | None
    observed_at: datetime

    def window(self, name: str) -> Window | None:
        return next((w for w in self.windows if w.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reset_at": _iso(self.reset_at),
            "representative_claim": self.representative_claim,
            "fallback": self.fallback,
            "fallback_percentage": self.fallback_percentage,
            "windows": [w.to_dict() for w in self.windows],
            "overage": self.overage.to_dict() if self.overage else None,
            "observed_at": _iso(self.observed_at),
        }


@dataclass(frozen=True)
class RawHeader:
    """A rate-limit header sluice does not know, or whose value did not parse: shown as it came."""

    name: str
    value: str
    observed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.name, "value": self.value, "observed_at": _iso(self.observed_at)}


@dataclass(frozen=True)
class QuotaSummary:
    """Everything one upstream credential's rate-limit headers say, normalized across providers."""

    observed_at: datetime
    limits: tuple[Limit, ...]
    unified: Unified | None
    retry_at: datetime | None
    other: tuple[RawHeader, ...]

    @property
    def is_empty(self) -> bool:
        return not self.limits and self.unified is None and self.retry_at is None and not self.other

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed_at": _iso(self.observed_at),
            "limits": [limit.to_dict() for limit in self.limits],
            "unified": self.unified.to_dict() if self.unified else None,
            "retry_at": _iso(self.retry_at),
            "other": [raw.to_dict() for raw in self.other],
        }


def summarize(
    headers: Mapping[str, str],
    observed_at: datetime,
    *,
    seen_at: Mapping[str, datetime] | None = None,
) -> QuotaSummary:
    """Normalize one credential's rate-limit headers (names compared case-insensitively).

    `observed_at` is when the response carrying them arrived; `seen_at` may give a different time for some
    headers (the latest state of a credential mixes headers from several responses), and durations count from
    each header's own time.
    """
    times = {name.lower(): as_utc(at) for name, at in (seen_at or {}).items()}
    base = as_utc(observed_at)
    values = {name.lower(): value.strip() for name, value in headers.items()}
    builder = _Builder()
    for name in sorted(values):
        builder.take(name, values[name], times.get(name, base))
    return builder.build(base)


def format_duration(delta: timedelta) -> str:
    """A short human duration, two units at most: `2h10m`, `3d4h`, `12s`, `450ms`."""
    micros = abs(delta) // timedelta(microseconds=1)
    if micros < 1_000_000:
        return f"{micros // 1_000}ms" if micros >= 1_000 else "0s"
    seconds = micros // 1_000_000
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count or parts:
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    while len(parts) > 1 and parts[-1][0] == "0":
        parts.pop()
    return "".join(parts)


def format_percent(fraction: float) -> str:
    """A 0..1 fraction as a whole percent; a non-zero fraction never shows as 0%."""
    percent = fraction * 100
    if 0 < percent < 1:
        return "<1%"
    return f"{math.floor(percent + 0.5)}%"


_SHORT_NAMES = {"requests": "req", "tokens": "tok", "input-tokens": "in", "output-tokens": "out"}
POOL_STATUSLINE_WINDOWS = 3


def pool_statusline(summaries: Sequence[QuotaSummary], now: datetime) -> str:
    """One short line for a pool of credentials: each window at its worst across them, the worst first (at
    most three), when the worst resets, and how many credentials it covers: `5h 97% · 7d 40% · resets
    1h10m · worst of 3 keys`. A window whose reset has passed is left out."""
    now = as_utc(now)
    worst: dict[str, tuple[float, datetime | None]] = {}
    for summary in summaries:
        for name, used, reset_at in _live_windows(summary, now):
            if name not in worst or used > worst[name][0]:
                worst[name] = (used, reset_at)
    if not worst:
        return "no rate limits seen"
    ranked = sorted(worst.items(), key=lambda item: -item[1][0])[:POOL_STATUSLINE_WINDOWS]
    parts = [f"{name} {format_percent(used)}" for name, (used, _) in ranked]
    reset_at = ranked[0][1][1]
    if reset_at is not None:
        parts.append(f"resets {format_duration(reset_at - now)}")
    parts.append(f"worst of {len(summaries)} keys")
    return " · ".join(parts)


def _live_windows(summary: QuotaSummary, now: datetime) -> list[tuple[str, float, datetime | None]]:
    """(short name, used fraction, reset) of every window and limit of a summary that has not reset yet."""
    found: list[tuple[str, float, datetime | None]] = []
    if summary.unified is not None:
        for window in summary.unified.windows:
            if window.utilization is not None and not (window.reset_at and window.reset_at <= now):
                found.append((window.name, window.utilization, window.reset_at))
    for limit in summary.limits:
        used = limit.used_fraction
        if used is not None and not (limit.reset_at and limit.reset_at <= now):
            found.append((_SHORT_NAMES.get(limit.name, limit.name), used, limit.reset_at))
    return found


def statusline(summary: QuotaSummary, now: datetime) -> str:
    """One short line for a shell prompt or Claude Code's status line: `5h 42% · 7d 13% · resets 2h10m`.

    A window whose reset has passed since the observation shows as `reset` instead of a stale percentage, and
    an observation older than a minute says how old it is.
    """
    now = as_utc(now)
    parts: list[str] = []
    resets: list[datetime] = []
    unified = summary.unified
    if unified is not None:
        if unified.status and unified.status != "allowed":
            parts.append(unified.status)
        for window in unified.windows:
            if window.utilization is None:
                continue
            if window.reset_at is not None and window.reset_at <= now:
                parts.append(f"{window.name} reset")
            else:
                parts.append(f"{window.name} {format_percent(window.utilization)}")
        if unified.overage is not None and unified.overage.utilization is not None:
            parts.append(f"overage {format_percent(unified.overage.utilization)}")
        # The overall reset is the representative claim's: the one that binds now.
        resets = [r for r in [unified.reset_at] if r is not None and r > now] or sorted(
            w.reset_at for w in unified.windows if w.reset_at is not None and w.reset_at > now
        )
    short = _SHORT_NAMES
    tightest: Limit | None = None
    for limit in summary.limits:
        used = limit.used_fraction
        if used is None:
            continue
        if limit.reset_at is not None and limit.reset_at <= now:
            parts.append(f"{short.get(limit.name, limit.name)} reset")
            continue
        parts.append(f"{short.get(limit.name, limit.name)} {format_percent(used)}")
        if tightest is None or used > (tightest.used_fraction or 0.0):
            tightest = limit
    if not resets and tightest is not None and tightest.reset_at is not None:
        resets = [tightest.reset_at]
    if summary.retry_at is not None and summary.retry_at > now:
        parts.append(f"retry in {format_duration(summary.retry_at - now)}")
    if resets:
        parts.append(f"resets {format_duration(resets[0] - now)}")
    if not parts:
        return "no rate limits seen"
    age = now - summary.observed_at
    if age >= timedelta(minutes=1):
        parts.append(f"seen {format_duration(age)} ago")
    return " · ".join(parts)


def _text(value: str) -> str | None:
    return value or None


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _integer(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        pass
    number = _number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


# Where a parsed header lands: ("limit", provider, name), ("unified",), ("overage",) or ("window", name).
type _Group = tuple[str, ...]

_UNIFIED_FIELDS: dict[str, _Parser | None] = {
    "status": _text,
    "reset": None,  # None: a reset time, parsed by parse_reset
    "representative-claim": _text,
    "fallback": _text,
    "fallback-percentage": _number,
}
_OVERAGE_FIELDS: dict[str, _Parser | None] = {
    "status": _text,
    "reset": None,
    "utilization": _number,
    "disabled-reason": _text,
}
# Longest suffix first: a window's name may itself contain hyphens (`7d-opus`).
_WINDOW_FIELDS: dict[str, _Parser | None] = {
    "surpassed-threshold": _number,
    "utilization": _number,
    "status": _text,
    "reset": None,
}


class _Builder:
    """Collects parsed headers of every family; whatever it cannot place goes to `other`."""

    def __init__(self) -> None:
        self.fields: dict[_Group, dict[str, Any]] = {}
        self.times: dict[_Group, list[datetime]] = {}
        self.seen: list[datetime] = []
        self.retry: dict[str, datetime] = {}
        self.other: list[RawHeader] = []

    def take(self, name: str, value: str, at: datetime) -> None:
        self.seen.append(at)
        if not self._place(name, value, at):
            self.other.append(RawHeader(name, value, at))

    def _place(self, name: str, value: str, at: datetime) -> bool:
        if window := window_header(name):
            return self._place_unified(window[1], value, at)
        if counted := counted_limit_header(name):
            provider, limit, field = counted
            parser = None if field == "reset" else _integer
            return self._store(("limit", provider.name, limit), field, value, at, parser)
        if name == "retry-after-ms":
            milliseconds = _number(value)
            if milliseconds is None:
                return False
            self.retry[name] = at + timedelta(milliseconds=milliseconds)
            return True
        if name == "retry-after":
            retry_at = parse_reset(value, at)
            if retry_at is None:
                return False
            self.retry[name] = retry_at
            return True
        return False

    def _place_unified(self, rest: str, value: str, at: datetime) -> bool:
        if rest in _UNIFIED_FIELDS:
            return self._store(("unified",), rest, value, at, _UNIFIED_FIELDS[rest])
        if (field := rest.removeprefix("overage-")) != rest:
            if field not in _OVERAGE_FIELDS:
                return False
            return self._store(("overage",), field, value, at, _OVERAGE_FIELDS[field])
        for field, parser in _WINDOW_FIELDS.items():
            window = rest.removesuffix(f"-{field}")
            if window != rest and _UNIFIED_WINDOW.fullmatch(window):
                return self._store(("window", window), field, value, at, parser)
        return False

    def _store(self, group: _Group, field: str, value: str, at: datetime, parser: _Parser | None) -> bool:
        """Parse `value` (a None parser means a reset time) and keep it; False if it does not parse."""
        parsed = parse_reset(value, at) if parser is None else parser(value)
        if parsed is None:
            return False
        self.fields.setdefault(group, {})[field] = parsed
        self.times.setdefault(group, []).append(at)
        return True

    def _groups(self, kind: str) -> list[tuple[_Group, dict[str, Any]]]:
        return [(group, fields) for group, fields in self.fields.items() if group[0] == kind]

    def build(self, observed_at: datetime) -> QuotaSummary:
        limits = tuple(
            Limit(
                provider=group[1],
                name=group[2],
                limit=fields.get("limit"),
                remaining=fields.get("remaining"),
                reset_at=fields.get("reset"),
                observed_at=max(self.times[group]),
            )
            for group, fields in sorted(self._groups("limit"), key=_limit_order)
        )
        windows = tuple(
            Window(
                name=group[1],
                status=fields.get("status"),
                utilization=fields.get("utilization"),
                surpassed_threshold=fields.get("surpassed-threshold"),
                reset_at=fields.get("reset"),
                observed_at=max(self.times[group]),
            )
            for group, fields in sorted(self._groups("window"), key=_window_order)
        )
        overage = None
        if fields := self.fields.get(("overage",)):
            overage = Overage(
                status=fields.get("status"),
                utilization=fields.get("utilization"),
                reset_at=fields.get("reset"),
                disabled_reason=fields.get("disabled-reason"),
                observed_at=max(self.times[("overage",)]),
            )
        unified = None
        if ("unified",) in self.fields or windows or overage:
            fields = self.fields.get(("unified",), {})
            unified = Unified(
                status=fields.get("status"),
                reset_at=fields.get("reset"),
                representative_claim=fields.get("representative-claim"),
                fallback=fields.get("fallback"),
                fallback_percentage=fields.get("fallback-percentage"),
                windows=windows,
                overage=overage,
                observed_at=max(
                    at for group, times in self.times.items() if group[0] != "limit" for at in times
                ),
            )
        return QuotaSummary(
            observed_at=max([observed_at, *self.seen]),
            limits=limits,
            unified=unified,
            # `retry-after-ms` is the more precise of the two when both came.
            retry_at=self.retry.get("retry-after-ms", self.retry.get("retry-after")),
            other=tuple(self.other),
        )


def _limit_order(item: tuple[_Group, dict[str, Any]]) -> tuple[str, int, str]:
    provider, name = item[0][-2:]
    rank = _LIMIT_ORDER.index(name) if name in _LIMIT_ORDER else len(_LIMIT_ORDER)
    return provider, rank, name


def _window_order(item: tuple[_Group, dict[str, Any]]) -> tuple[int, str]:
    name = item[0][-1]
    match = _UNIFIED_WINDOW.fullmatch(name)
    hours = 0 if match is None else int(match["count"]) * (24 if match["unit"] == "d" else 1)
    return hours, name


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
