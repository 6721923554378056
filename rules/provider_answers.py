"""What a provider's answer says about the credential that carried it, and what the pool should do about it.

Pure: the status, the headers and the error body go in, a `Verdict` comes out. The pool (state/pool.py)
applies it; nothing here reads a clock or a database. Each class of answer moves the pool its own way, and the
provider's words are kept as the reason:

- **rate limited** (429 `rate_limit_error`): the key rests until the time the answer names (`retry-after-ms`,
  `retry-after`, else the reset of the limit that ran out), 60 s when it names none;
- **window exhausted** (429 with `anthropic-ratelimit-unified-status: rejected`, or an "extra usage" /
  "usage limit" message): a subscription's 5-hour or weekly window is spent; the credential rests until that
  window resets, and the reason says which window and when;
- **overloaded** (529, or any answer whose error type is `overloaded_error`): the provider's state, not the
  key's. No key is cooled; the provider-wide breaker (`Breaker`) counts it;
- **terminal** (the organization is disabled, OAuth is not allowed for it, no credit left, an OpenAI
  `insufficient_quota`): the credential is disabled with the provider's words, until an operator resets it;
- **refused** (401): an API key is disabled; an OAuth access token is dropped and refreshed (`reauth`), since
  access tokens are revoked and rotated under a client's feet (a new login elsewhere, a server-side revoke);
- anything else (other 4xx such as a 403 `permission_error` for one model, 5xx) says nothing about the
  credential: the pool is not moved, and the client gets the provider's answer.

The shapes of each answer, with where they come from, are kept in tests/fixtures/provider_answers/.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from rules.providers import counted_limit_header, window_header, window_prefixes
from rules.times import parse_reset

if TYPE_CHECKING:
    from rules.providers import Provider

Action = Literal["none", "cool", "window", "overloaded", "disable", "reauth"]
Kind = Literal["key", "oauth", "aws"]  # aws: a key pair sluice signs with (SigV4)

# When the answer names no time. Anthropic's SDKs and OpenAI's retry after ~0.5-8 s with backoff; a pool can
# afford to rest a key longer, since the next key takes over at once.
RATE_LIMITED_COOLDOWN_S = 60.0
# A spent subscription window whose reset the answer does not name: long enough not to hammer it.
WINDOW_UNKNOWN_RESET_S = 300.0
OVERLOADED_RETRY_S = 5.0
# A broken header must not shelve a key forever; Anthropic's longest window (7 days) is the ceiling.
MAX_COOLDOWN_S = 7 * 24 * 3600.0
# Error bodies are small; a larger one is not an error envelope worth reading.
MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """The error envelope's fields: Anthropic `{"type": "error", "error": {"type", "message"}}`, OpenAI
    `{"error": {"message", "type", "code"}}`, Google `{"error": {"code", "message", "status", "details"}}`
    (`type` is then the status name, `code` the ErrorInfo reason when there is one, `retry_s` the RetryInfo
    delay). Empty strings when absent."""

    type: str = ""
    code: str = ""
    message: str = ""
    retry_s: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with the credential. `seconds`: how long it rests (cool, window), or the retry the provider
    asked for (overloaded). `reason`: for the pool's row and the events, the provider's words in it."""

    action: Action
    reason: str = ""
    seconds: float | None = None


NOTHING = Verdict("none")


def read_error(body: bytes | None, type_header: str | None = None) -> ErrorFields:
    """The error envelope of an answer body; empty fields when it is not one. Never raises.

    `type_header`: the value of the provider's error-type header (`Provider.error_type_header`), for an
    envelope that carries only a message (AWS: `{"message": ...}` with `x-amzn-errortype`); a `__type` in
    the body says the same (AWS JSON protocols)."""
    if not body or len(body) > MAX_ERROR_BODY:
        return ErrorFields(type=_aws_type(type_header), code=_aws_type(type_header))
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return ErrorFields(message=error)
    if not isinstance(error, dict):
        found = data if isinstance(data, dict) else {}
        kind = _aws_type(_text(found.get("__type")) or type_header)
        return ErrorFields(kind, kind, _text(found.get("message")) or _text(found.get("Message")))
    reason, delay = _google_details(error.get("details"))
    kind = _text(error.get("type")) or _text(error.get("status"))
    return ErrorFields(kind, reason or _text(error.get("code")), _text(error.get("message")), delay)


def _aws_type(value: str | None) -> str:
    """An AWS error type as botocore reads it: `ThrottlingException:http://...` and
    `com.amazon.coral#ThrottlingException` are `ThrottlingException`."""
    return (value or "").split(":", 1)[0].rsplit("#", 1)[-1].strip()


_DURATION = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)s")


def _google_details(details: object) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds) of Google's `details`
    (https://cloud.google.com/apis/design/errors#error_details): `API_KEY_INVALID`, `"17s"`."""
    reason, delay = "", None
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = _text(detail.get("@type"))
        if kind.endswith("google.rpc.ErrorInfo"):
            reason = _text(detail.get("reason"))
        elif kind.endswith("google.rpc.RetryInfo") and isinstance(detail.get("retryDelay"), str):
            found = _DURATION.fullmatch(detail["retryDelay"].strip())
            delay = min(float(found.group(1)), MAX_COOLDOWN_S) if found else None
    return reason, delay


def judge_answer(
    provider: Provider,
    status: int,
    headers: Mapping[str, str],
    error: ErrorFields,
    kind: Kind,
    now: float,
    echoed: Collection[str] = (),
) -> Verdict:
    """What the pool does with the credential that got this answer (see the module's docstring). Header names
    are compared case-insensitively. `echoed`: the words of `class_words` that the client wrote itself
    (`client_wrote`); in the message they are the client's words repeated, not the provider's, and say
    nothing of the credential. `provider`: the format of the upstream whose key got the answer
    (rules/providers `format_of`): its words, codes, window headers and overloaded answers are read."""
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    said = error.message.lower()
    for phrase in echoed:
        said = said.replace(phrase, " ")
    words = " ".join((error.type.lower(), error.code.lower(), said))
    message = error.message
    if _overloaded(provider, status, error.type):
        wait = retry_after(lowered, now) or error.retry_s
        return Verdict("overloaded", _reason(status, message, "overloaded"), wait)
    if status < 400 or status >= 500:
        return NOTHING
    if any(word in words for word in provider.terminal_words) or error.code in provider.terminal_codes:
        return Verdict("disable", _reason(status, message, error.code or "refused"))
    if status == 401:
        if kind == "oauth":
            return Verdict("reauth", _reason(status, message, "access token refused"))
        return Verdict("disable", _reason(status, message, "refused"))
    if status != 429:
        return NOTHING
    prefix = provider.window_prefix
    rejected = bool(prefix) and lowered.get(prefix + "status") == "rejected"
    if rejected or any(word in words for word in provider.window_words):
        return _window(prefix, lowered, message, now)
    seconds = parse_cooldown(lowered, now, error.retry_s or RATE_LIMITED_COOLDOWN_S)
    return Verdict("cool", _reason(status, message, "rate limited"), seconds)


def _overloaded(provider: Provider, status: int, kind: str) -> bool:
    """Whether the answer is one of the provider's "overloaded" answers (its state, not the key's)."""
    return any(
        (want_status is None or want_status == status) and (want_type is None or want_type == kind)
        for want_status, want_type in provider.overloaded_answers
    )


def class_words(provider: Provider, error: ErrorFields) -> tuple[str, ...]:
    """The words in an error message that would rest or disable a credential. Providers repeat a client's
    input in their messages (Anthropic's 404 `model: <model>`, an unexpected `anthropic-beta` value, OpenAI's
    "The model `<model>` does not exist"), so a client could write them itself: check them with
    `client_wrote` before the pool acts on them."""
    message = error.message.lower()
    return tuple(word for word in (*provider.terminal_words, *provider.window_words) if word in message)


def client_wrote(words: Collection[str], body: bytes | None, texts: Iterable[str]) -> frozenset[str]:
    """Which of `words` the client wrote itself, and so may be what the provider repeated: found in the
    request body (its raw text, and every string of its JSON with escapes decoded), or in `texts` (the path,
    the header values). Fails closed for the pool: every word counts as the client's when the body could not
    be read (`body` None: compressed past the cap) or is JSON too deep to walk."""
    if not words:
        return frozenset()
    if body is None:
        return frozenset(words)
    parts = [body.decode("utf-8", "replace"), *texts]
    try:
        parts.extend(_strings(json.loads(body)))
    except ValueError:
        pass  # not JSON: the provider can repeat only its raw text, which is there already
    except RecursionError:
        return frozenset(words)
    sent = " ".join(" ".join(parts).lower().split())
    return frozenset(word for word in words if word in sent)


def _strings(value: object) -> list[str]:
    """Every key and string in a JSON document, walked without recursion."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(key for key in item if isinstance(key, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _window(prefix: str, headers: Mapping[str, str], message: str, now: float) -> Verdict:
    """A spent subscription window: rest until it resets, and say which window and when. `prefix`: the
    provider's window header family ("" when it has none)."""
    claim = (prefix and headers.get(prefix + "representative-claim")) or _rejected_window(prefix, headers)
    reset = _epoch(headers.get(prefix + "reset"), now) if prefix else None
    if reset is None:
        resets = [
            moment
            for name, value in headers.items()
            if prefix
            and name.startswith(prefix)
            and name.endswith("-reset")
            and name != prefix + "overage-reset"
            if (moment := _epoch(value, now)) is not None
        ]
        reset = max(resets, default=None)
    if reset is None or reset <= now:
        seconds = parse_cooldown(headers, now, WINDOW_UNKNOWN_RESET_S)
        until = "a reset the answer did not name"
    else:
        seconds = min(reset - now, MAX_COOLDOWN_S)
        until = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%d %H:%M UTC")
    words = f": {message.strip()}" if message.strip() else ""
    return Verdict("window", f"429 {claim or 'subscription'} window exhausted until {until}{words}", seconds)


def _rejected_window(prefix: str, headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if prefix and name.startswith(prefix) and name.endswith("-status") and value == "rejected":
            window = name[len(prefix) : -len("-status")]
            if window and window != "overage":
                return window
    return None


def quota_status(headers: Mapping[str, str]) -> str | None:
    """The subscription status on this answer (`allowed`, `allowed_warning`, `rejected`: a provider's
    `<window_prefix>status`), if any."""
    for name, value in headers.items():
        window = window_header(name.lower())
        if window is not None and window[1] == "status":
            text = value.strip().lower()
            return text if re.fullmatch(r"[a-z_]{1,32}", text) else None
    return None


def headroom(headers: Mapping[str, str]) -> float | None:
    """How much of its limits a credential has left, 0..1, by the tightest limit the answer reports; None
    when it reports none. Subscription windows report utilization (`<window_prefix>5h-utilization`, 0..1);
    counted limits report remaining and limit (`Provider.counted_limits`)."""
    left: list[float] = []
    for name, value in headers.items():
        window = window_header(name.lower())
        if window is not None and window[1].endswith("-utilization"):
            used = _number(value)
            if used is not None:
                left.append(1.0 - used)
    for fields in _counted_limits(headers).values():
        limit, remaining = _number(fields.get("limit")), _number(fields.get("remaining"))
        if limit and remaining is not None:
            left.append(remaining / limit)
    if not left:
        return None
    return min(1.0, max(0.0, min(left)))


def _counted_limits(headers: Mapping[str, str]) -> dict[tuple[str, str], dict[str, str]]:
    """The answer's counted limits: (provider, limit) -> {field: value} (`limit`, `remaining`, `reset`)."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for name, value in headers.items():
        if counted := counted_limit_header(name.lower()):
            provider, limit, field = counted
            found.setdefault((provider.name, limit), {})[field] = value
    return found


# -- times ---------------------------------------------------------------------------------------------------


def parse_cooldown(headers: Mapping[str, str], now: float, default_s: float) -> float:
    """How long to rest a credential after a 429, in seconds, from the answer's headers.

    In order: `retry-after-ms` (milliseconds; Anthropic and OpenAI send it and their SDKs prefer it),
    `retry-after` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); then, for a subscription window
    family, `<window_prefix>reset` (epoch seconds) when `<window_prefix>status` is `rejected`; then the reset
    of an exhausted counted limit (`Provider.counted_limits`: OpenAI's durations, Anthropic's RFC 3339). A
    missing or malformed value falls through to the next; `default_s` when none is usable. The result is
    capped at MAX_COOLDOWN_S. Header names are compared case-insensitively.
    """
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    wait = retry_after(lowered, now)
    if wait is not None:
        return wait
    for prefix in window_prefixes():
        if lowered.get(prefix + "status") == "rejected":
            reset = _epoch(lowered.get(prefix + "reset"), now)
            if reset is not None and reset > now:
                return min(reset - now, MAX_COOLDOWN_S)
    exhausted = _exhausted_reset(lowered, now)
    return exhausted if exhausted is not None else default_s


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """`retry-after-ms`, else `retry-after` (seconds or HTTP-date), in seconds; None when neither is usable.
    `headers` must have lower-case names."""
    milliseconds = _seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return min(milliseconds / 1000, MAX_COOLDOWN_S)
    value = headers.get("retry-after")
    if value is None:
        return None
    delay = _seconds(value)
    if delay is None:
        moment = parse_reset(value, datetime.fromtimestamp(now, UTC)) if "," in value else None
        delay = None if moment is None else max(0.0, moment.timestamp() - now)
    return None if delay is None else min(delay, MAX_COOLDOWN_S)


def _exhausted_reset(headers: Mapping[str, str], now: float) -> float | None:
    """The latest reset among counted limits with nothing remaining (the one the 429 is about)."""
    resets: list[float] = []
    for fields in _counted_limits(headers).values():
        if _number(fields.get("remaining")) != 0 or "reset" not in fields:
            continue
        moment = parse_reset(fields["reset"], datetime.fromtimestamp(now, UTC))
        if moment is not None and moment.timestamp() > now:
            resets.append(moment.timestamp() - now)
    return min(max(resets), MAX_COOLDOWN_S) if resets else None


_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def _seconds(value: str | None) -> float | None:
    if value is None or not _SECONDS.fullmatch(value.strip()):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _epoch(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    moment = parse_reset(value, datetime.fromtimestamp(now, UTC))
    return None if moment is None else moment.timestamp()


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _reason(status: int, message: str, fallback: str) -> str:
    return f"{status} {message.strip() if message.strip() else fallback}"


# -- the provider-wide breaker -------------------------------------------------------------------------------


class Breaker:
    """One provider host's overload breaker: an overloaded provider is not a bad key.

    Closed, it counts overloaded answers; `threshold` of them within `window_s` open it for the provider's
    retry time (at least `min_open_s`, at most `max_open_s`). While it is open sluice answers clients itself
    with a retry time instead of adding load to a provider that said it has too much, and no key is cooled.
    Once that time has passed it is half-open: requests go upstream again, the first answer that is not
    overloaded closes it, and an overloaded one opens it again at once. Not thread-safe: the event loop owns
    it.
    """

    def __init__(
        self, threshold: int = 3, window_s: float = 10.0, min_open_s: float = 2.0, max_open_s: float = 30.0
    ) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.min_open_s = min_open_s
        self.max_open_s = max_open_s
        self._seen: list[float] = []  # times of recent overloaded answers, at most `threshold`
        self._open_until: float | None = None  # set while open and while half-open

    def overloaded(self, now: float, retry_s: float | None) -> float | None:
        """Count an overloaded answer. Returns how long the breaker is open, when this answer opened it."""
        if self._open_until is not None and now < self._open_until:
            return None  # already open: an answer to a request sent before it opened
        self._seen = [moment for moment in self._seen if now - moment < self.window_s]
        self._seen.append(now)
        del self._seen[: -self.threshold]
        if self._open_until is None and len(self._seen) < self.threshold:
            return None
        seconds = min(self.max_open_s, max(self.min_open_s, retry_s or OVERLOADED_RETRY_S))
        self._open_until = now + seconds
        self._seen = []
        return seconds

    def succeeded(self, now: float) -> bool:
        """Count an answer that was not overloaded. True when it closed a half-open breaker."""
        if self._open_until is None or now < self._open_until:
            return False
        self._open_until = None
        return True

    def open_for(self, now: float) -> float | None:
        """Seconds the breaker stays open, None when requests may go upstream."""
        if self._open_until is None or now >= self._open_until:
            return None
        return self._open_until - now
