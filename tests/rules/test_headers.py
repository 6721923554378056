import pytest

from rules.config import HeaderPolicy
from rules.headers import (
    HeaderAllowList,
    HeaderRule,
    build_policy,
    connection_listed,
    default_request_policy,
    default_response_policy,
    filter_headers,
    is_upgrade_request,
)
from rules.providers import provider
from rules.providers import provider as known


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("content-type", "Content-Type", True),
        ("content-type", "content-types", False),
        ("anthropic-*", "anthropic-beta", True),
        ("anthropic-*", "Anthropic-Ratelimit-Unified-5h-Utilization", True),
        ("anthropic-*", "anthropic-", True),
        ("anthropic-*", "x-anthropic-beta", False),
        ("*ratelimit*", "x-ratelimit-remaining-tokens", True),
        ("*ratelimit*", "anthropic-ratelimit-requests-reset", True),
        ("*ratelimit*", "ratelimit", True),
        ("*ratelimit*", "rate-limit", False),
        ("x-*-id", "x-request-id", True),
        ("x-*-id", "x-id", False),
        ("*", "anything", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),
    ],
)
def test_rule_matching(pattern: str, name: str, matches: bool) -> None:
    assert HeaderRule(pattern).matches(name) is matches


@pytest.mark.parametrize("pattern", ["", "  ", "x api key", "x-api-key:", "x-[ab]", "caf\u00e9"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a header name"):
        HeaderRule(pattern)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        # What the anthropic SDK and Claude Code send.
        ("Host", True),
        ("Content-Type", True),
        ("Accept", True),
        ("Accept-Encoding", True),
        ("User-Agent", True),
        ("X-Api-Key", True),
        ("Authorization", True),
        ("anthropic-version", True),
        ("anthropic-beta", True),
        ("anthropic-dangerous-direct-browser-access", True),
        ("X-Stainless-Lang", True),
        ("x-stainless-retry-count", True),
        ("x-stainless-helper-method", True),
        ("Idempotency-Key", True),
        ("x-claude-code-session-id", True),
        ("x-app", True),
        # What Claude Code sends beyond its x-claude-code-* family.
        ("x-client-request-id", True),
        ("x-claude-1p-request-class", True),
        ("x-claude-remote-session-id", True),
        ("x-anthropic-additional-protection", True),
        ("x-client-app", True),
        # Not the provider's business.
        ("Cookie", False),
        ("X-Forwarded-For", False),
        ("Forwarded", False),
        ("Via", False),
        ("Proxy-Authorization", False),
        ("X-Sluice-Client", False),
        ("openai-organization", False),
        ("traceparent", False),
    ],
)
def test_default_anthropic_request_policy(name: str, kept: bool) -> None:
    assert default_request_policy(provider("anthropic")).permits(name) is kept


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("OpenAI-Organization", True),
        ("OpenAI-Project", True),
        ("OpenAI-Beta", True),
        ("X-Client-Request-Id", True),
        ("X-Stainless-Async", True),
        ("Authorization", True),
        ("anthropic-version", False),
        ("x-api-key", False),
    ],
)
def test_default_openai_request_policy(name: str, kept: bool) -> None:
    assert default_request_policy(provider("openai")).permits(name) is kept


@pytest.mark.parametrize(
    ("provider", "name", "kept"),
    [
        ("anthropic", "anthropic-ratelimit-unified-7d-utilization", True),
        ("anthropic", "anthropic-ratelimit-tokens-reset", True),
        ("anthropic", "anthropic-organization-id", True),
        ("anthropic", "request-id", True),
        ("anthropic", "retry-after", True),
        ("anthropic", "x-should-retry", True),
        ("anthropic", "Content-Type", True),
        ("anthropic", "Content-Encoding", True),
        ("anthropic", "Date", True),
        ("anthropic", "Set-Cookie", False),
        ("anthropic", "Server", False),
        ("anthropic", "cf-ray", False),
        ("openai", "x-ratelimit-remaining-requests", True),
        ("openai", "x-ratelimit-reset-tokens", True),
        ("openai", "openai-processing-ms", True),
        ("openai", "openai-version", True),
        ("openai", "x-request-id", True),
        ("openai", "retry-after-ms", True),
        ("openai", "Set-Cookie", False),
        ("openai", "anthropic-organization-id", False),
    ],
)
def test_default_response_policies(provider: str, name: str, kept: bool) -> None:
    assert default_response_policy(known(provider)).permits(name) is kept


def test_filter_keeps_order_casing_and_repeats_and_reports_drops_once() -> None:
    pairs = [
        ("Host", "api.anthropic.com"),
        ("X-Stainless-OS", "Linux"),
        ("Cookie", "a=1"),
        ("anthropic-beta", "oauth-2025-04-20"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("cookie", "b=2"),
    ]
    kept, dropped = filter_headers(pairs, default_request_policy(provider("anthropic")))
    assert kept == [pairs[0], pairs[1], pairs[3], pairs[4]]
    assert dropped == ["Cookie"]


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
    ],
)
def test_hop_by_hop_is_removed_even_when_allowed(name: str) -> None:
    everything = HeaderAllowList((HeaderRule("*"),))
    kept, dropped = filter_headers([(name, "x"), ("a", "b")], everything)
    assert kept == [("a", "b")]
    assert dropped == [name]


def test_names_listed_in_connection_are_removed() -> None:
    pairs = [
        ("Connection", "keep-alive, X-Trace"),
        ("connection", " Anthropic-Beta "),
        ("x-trace", "1"),
        ("anthropic-beta", "b"),
        ("anthropic-version", "2023-06-01"),
    ]
    assert connection_listed(pairs) == {"keep-alive", "x-trace", "anthropic-beta"}
    kept, dropped = filter_headers(pairs, HeaderAllowList((HeaderRule("*"),)))
    assert kept == [("anthropic-version", "2023-06-01")]
    assert dropped == ["Connection", "x-trace", "anthropic-beta"]


@pytest.mark.parametrize(
    "pairs",
    [
        [("Transfer-Encoding", "chunked")],
        [("Content-Length", "12")],
        [
            ("Connection", "transfer-encoding, content-length"),
            ("Transfer-Encoding", "chunked"),
            ("content-length", "1"),
        ],
    ],
)
def test_framing_headers_are_left_to_the_caller(pairs: list[tuple[str, str]]) -> None:
    nothing = HeaderAllowList(())
    kept, _ = filter_headers(pairs, nothing)
    assert kept == [pair for pair in pairs if pair[0].lower() != "connection"]


def test_bytes_pairs_come_back_as_the_same_bytes() -> None:
    pairs = [(b"Anthropic-Version", b"2023-06-01"), (b"Cookie", b"a"), (b"X-Odd", b"\xe9")]
    kept, dropped = filter_headers(pairs, default_request_policy(provider("anthropic")))
    assert kept == [(b"Anthropic-Version", b"2023-06-01")]
    assert dropped == ["Cookie", "X-Odd"]


def test_operator_allow_and_deny_merge_with_defaults() -> None:
    policy = build_policy(
        provider("anthropic"),
        "request",
        HeaderPolicy(allow=["traceparent", "x-team-*"], deny=["x-stainless-os"]),
    )
    assert policy.permits("traceparent")
    assert policy.permits("X-Team-Name")
    assert policy.permits("anthropic-beta")  # defaults still there
    assert not policy.permits("X-Stainless-OS")  # deny wins over the x-stainless-* family
    assert policy.permits("x-stainless-lang")
    assert not policy.permits("cookie")


def test_operator_cannot_reopen_default_denials_without_replacing_defaults() -> None:
    merged = build_policy(provider("anthropic"), "response", HeaderPolicy(allow=["*"]))
    assert merged.permits("server")
    assert not merged.permits("set-cookie")
    replaced = build_policy(
        provider("anthropic"), "response", HeaderPolicy(allow=["*"], replace_defaults=True)
    )
    assert replaced.permits("set-cookie")
    kept, _ = filter_headers([("Upgrade", "h2c"), ("Set-Cookie", "a")], replaced)
    assert kept == [("Set-Cookie", "a")]  # hop-by-hop still removed


def test_replaced_defaults_are_exactly_the_operators() -> None:
    policy = build_policy(
        provider("openai"), "request", HeaderPolicy(allow=["authorization"], replace_defaults=True)
    )
    assert policy.permits("Authorization")
    assert not policy.permits("openai-organization")
    assert not policy.permits("content-type")


def test_bad_operator_pattern_fails_at_build_time() -> None:
    with pytest.raises(ValueError, match="'x foo'"):
        build_policy(provider("openai"), "response", HeaderPolicy(allow=["x foo"]))


@pytest.mark.parametrize(
    ("pairs", "upgrade"),
    [
        ([("Connection", "Upgrade"), ("Upgrade", "websocket")], True),
        ([("connection", "keep-alive, upgrade"), ("upgrade", "websocket")], True),
        ([("Connection", "keep-alive, Upgrade")], False),  # no Upgrade header: nothing to switch to
        ([("Upgrade", "websocket")], False),  # Upgrade not listed in Connection (RFC 9110 §7.8)
        ([("Connection", "close"), ("Upgrade", "websocket")], False),
        ([], False),
    ],
)
def test_an_upgrade_request_needs_both_upgrade_and_connection_upgrade(
    pairs: list[tuple[str, str]], upgrade: bool
) -> None:
    assert is_upgrade_request(pairs) is upgrade


def test_a_genuine_upgrade_keeps_what_the_switch_needs_and_still_filters_the_rest() -> None:
    pairs = [
        ("Host", "api.openai.com"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Cookie", "session=1"),
        ("X-Forwarded-For", "10.0.0.1"),
    ]
    kept, dropped = filter_headers(pairs, default_request_policy(provider("openai")), upgrade=True)
    assert kept == pairs[:5]
    assert dropped == ["Cookie", "X-Forwarded-For"]
    kept, _ = filter_headers(pairs, default_request_policy(provider("openai")))
    assert kept == [("Host", "api.openai.com")]
