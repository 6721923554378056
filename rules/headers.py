"""Header allow-lists, both directions: only named headers and header families cross the proxy.

Headers are (name, value) pairs, as h11 and mitmproxy's `Headers.fields` hold them (`str` or `bytes`, the
same type out as in), compared case-insensitively with the original casing and order kept (RFC 9110 §5.1).
Patterns are exact names or families with `*` globs (`anthropic-*`, `*ratelimit*`), so a provider's next
header in a family is not stripped.

Framing is the caller's: `Content-Length` and `Transfer-Encoding` are always kept, whatever the policy says.
Transfer-Encoding is hop-by-hop (RFC 9110 §7.6.1), but mitmproxy frames the message it sends from these very
headers: removing `transfer-encoding: chunked` without a Content-Length desynchronizes the connection.
The addon keeps them consistent with the body it sends (mitmproxy's `Message.content` setter updates
Content-Length, and leaves it alone when Transfer-Encoding is present).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from rules.config import HeaderPolicy

if TYPE_CHECKING:
    from rules.providers import Provider

Direction = Literal["request", "response"]

# Message framing: kept unconditionally, the caller owns them (see the module docstring).
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

# RFC 9110 §7.6.1: Connection, the names it lists, and Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
# Upgrade are hop-by-hop. Proxy-Authorization / Proxy-Authenticate (§11.7.1, §11.7.2) are consumed by the
# proxy they address. Never forwarded, whatever an operator allows (Transfer-Encoding: see FRAMING_HEADERS).
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)

# RFC 9110 §5.6.2 token characters, plus `*` for globs.
_TCHAR = frozenset("!#$%&'+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """An exact header name or a `*` glob over names, matched case-insensitively."""

    pattern: str

    def __post_init__(self) -> None:
        lowered = self.pattern.strip().lower()
        if not lowered or any(char not in _TCHAR and char != "*" for char in lowered):
            raise ValueError(f"not a header name or `*` pattern: {self.pattern!r}")
        object.__setattr__(self, "pattern", lowered)

    def matches(self, name: str) -> bool:
        return _glob_match(self.pattern, name.lower())


def _glob_match(pattern: str, name: str) -> bool:
    """`*` matches any run of characters, including none; every other character matches itself."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return name == pattern
    head, *middle, tail = pieces
    if len(name) < len(head) + len(tail) or not name.startswith(head) or not name.endswith(tail):
        return False
    position, end = len(head), len(name) - len(tail)
    for piece in middle:
        found = name.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


# Every call carries the same few dozen header names, and matching one name against every glob is most of
# the filter's cost: a policy remembers its verdicts, for at most this many names (a client that invents a
# new name per request cannot grow the memory without bound; past it, names are matched afresh).
VERDICTS_MAX = 4096


@dataclass(frozen=True, slots=True)
class HeaderAllowList:
    """A compiled policy: a header passes when some `allow` rule matches it and no `deny` rule does."""

    allow: tuple[HeaderRule, ...]
    deny: tuple[HeaderRule, ...] = ()
    # By the name exactly as it arrives (str or bytes, any casing): (kept, lower-cased, as text).
    _by_raw_name: dict[str | bytes, tuple[bool, str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def permits(self, name: str) -> bool:
        lowered = name.lower()
        return any(rule.matches(lowered) for rule in self.allow) and not any(
            rule.matches(lowered) for rule in self.deny
        )

    def verdict(self, name: str | bytes) -> tuple[bool, str, str]:
        """Whether `filter_headers` keeps a header of this name on its own (framing kept, hop-by-hop
        dropped, the rest as the policy says), with the name lower-cased and as text."""
        found = self._by_raw_name.get(name)
        if found is None:
            text = _text(name)
            lowered = text.lower()
            if lowered in FRAMING_HEADERS:
                keep = True
            elif lowered in HOP_BY_HOP_HEADERS:
                keep = False
            else:
                keep = self.permits(lowered)
            found = (keep, lowered, text)
            if len(self._by_raw_name) < VERDICTS_MAX:
                self._by_raw_name[name] = found
        return found


def _rules(patterns: Iterable[str]) -> tuple[HeaderRule, ...]:
    unique: dict[str, HeaderRule] = {}
    for pattern in patterns:
        rule = HeaderRule(pattern)
        unique.setdefault(rule.pattern, rule)
    return tuple(unique.values())


# What the official SDKs send (anthropic/openai `_base_client.py`: Accept, Content-Type, User-Agent,
# X-Stainless-*, Idempotency-Key) and what the providers document.
_REQUEST_COMMON = (
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "accept",
    "accept-encoding",
    "user-agent",
    "authorization",
    "idempotency-key",
    "x-stainless-*",
    # A client-chosen id both providers log for support lookups (Claude Code, OpenAI SDKs).
    "x-client-request-id",
)
_RESPONSE_COMMON = (
    "content-type",
    "content-length",
    "content-encoding",
    "date",
    "cache-control",
    "vary",
    # Every rate-limit family: anthropic-ratelimit-*(-unified-*), x-ratelimit-*, and whatever comes next.
    "*ratelimit*",
    # What the SDKs' retry logic reads (`_base_client.py`: retry-after-ms, retry-after, x-should-retry).
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "request-id",
    "x-request-id",
)
# Never let through by the defaults even if a family above grew to match them: cookies (sluice's
# clients are API clients, not browsers), what a proxy adds about its own hop, and sluice's own headers.
_DENY_DEFAULT = (
    "cookie",
    "set-cookie",
    "set-cookie2",
    "proxy-*",
    "forwarded",
    "x-forwarded-*",
    "via",
    "x-real-ip",
    "x-sluice-*",
)


def default_request_policy(provider: Provider | None) -> HeaderAllowList:
    """The request headers a provider's clients legitimately send (the common set and the provider's own
    families, rules/providers); no provider: the common set."""
    own = provider.request_headers if provider is not None else ()
    return HeaderAllowList(_rules((*_REQUEST_COMMON, *own)), _rules(_DENY_DEFAULT))


def default_response_policy(provider: Provider | None) -> HeaderAllowList:
    """The response headers clients need: content, rate limits, retry hints and request ids."""
    own = provider.response_headers if provider is not None else ()
    return HeaderAllowList(_rules((*_RESPONSE_COMMON, *own)), _rules(_DENY_DEFAULT))


def build_policy(provider: Provider | None, direction: Direction, config: HeaderPolicy) -> HeaderAllowList:
    """Merge the operator's `HeaderPolicy` with the provider defaults; fails closed at configuration.

    Merged (the default): allow = defaults + `allow`, deny = default deny + `deny`; deny wins.
    `replace_defaults = true`: `allow` and `deny` are the whole policy (cookies too are then the operator's
    call). Hop-by-hop headers are removed either way. A pattern that is not a header name or `*` glob
    raises ValueError naming it, for the addon's `configure` to report.
    """
    if config.replace_defaults:
        return HeaderAllowList(_rules(config.allow), _rules(config.deny))
    defaults = (
        default_request_policy(provider) if direction == "request" else default_response_policy(provider)
    )
    return HeaderAllowList(
        _rules([*(rule.pattern for rule in defaults.allow), *config.allow]),
        _rules([*(rule.pattern for rule in defaults.deny), *config.deny]),
    )


def _text(value: str | bytes) -> str:
    # Header bytes are ISO-8859-1 in mitmproxy and h11 alike (RFC 9110 §5.5: obs-text is opaque).
    return value.decode("latin-1") if isinstance(value, bytes) else value


def connection_listed(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> frozenset[str]:
    """Lower-cased names listed in every Connection header (RFC 9110 §7.6.1: comma-separated tokens)."""
    listed: set[str] = set()
    for name, value in pairs:
        if _text(name).lower() == "connection":
            listed.update(_tokens(value))
    return frozenset(listed)


def _tokens(value: str | bytes) -> list[str]:
    return [token.strip().lower() for token in _text(value).split(",") if token.strip()]


def is_upgrade_request(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> bool:
    """An upgrade request carries an Upgrade header and lists `upgrade` in Connection (RFC 9110 §7.8).

    `Connection: upgrade` alone upgrades nothing; and it is only an upgrade once the server answers 101.
    """
    pairs = list(pairs)
    has_upgrade = any(_text(name).lower() == "upgrade" for name, _ in pairs)
    return has_upgrade and "upgrade" in connection_listed(pairs)


def _kept_for_upgrade(lowered: str) -> bool:
    # What a protocol switch needs on both hops: Connection and Upgrade (RFC 9110 §7.8) and the WebSocket
    # handshake's own fields (RFC 6455 §4.1, §4.2.2).
    return lowered in ("connection", "upgrade") or lowered.startswith("sec-websocket-")


def filter_headers[H: (str, bytes)](
    pairs: Sequence[tuple[H, H]], policy: HeaderAllowList, *, upgrade: bool = False
) -> tuple[list[tuple[H, H]], list[str]]:
    """Keep the headers `policy` permits; returns (kept pairs, dropped names).

    Kept pairs are the input's own objects in their original order and casing. Dropped names are listed
    once each, in first-seen casing (for logs and mitmweb). Always removed: hop-by-hop headers and every
    name a Connection header lists. Always kept: the framing headers Content-Length and Transfer-Encoding
    (the caller's to keep consistent with the body; see the module docstring). Fails closed: anything
    not allowed is dropped. With `upgrade` (a genuine upgrade request, or the 101 that answers one), the
    headers the protocol switch needs are kept too, and everything else is filtered as always.
    """
    kept: list[tuple[H, H]] = []
    dropped: list[str] = []
    seen_dropped: set[str] = set()
    listed: set[str] = set()
    for name, value in pairs:
        keep, lowered, text = policy.verdict(name)
        if lowered == "connection":
            listed.update(_tokens(value))
        if upgrade and _kept_for_upgrade(lowered):
            keep = True
        if keep:
            kept.append((name, value))
        elif lowered not in seen_dropped:
            seen_dropped.add(lowered)
            dropped.append(text)
    if listed - FRAMING_HEADERS:  # rare: a Connection header naming more hop-by-hop headers
        still: list[tuple[H, H]] = []
        for name, value in kept:
            _, lowered, text = policy.verdict(name)
            if (
                lowered in listed
                and lowered not in FRAMING_HEADERS
                and not (upgrade and _kept_for_upgrade(lowered))
            ):
                if lowered not in seen_dropped:
                    seen_dropped.add(lowered)
                    dropped.append(text)
            else:
                still.append((name, value))
        kept = still
    return kept, dropped
