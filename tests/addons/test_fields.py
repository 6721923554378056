from __future__ import annotations

from addons.fields import header_values, rate_limit_values, with_headers

FIELDS = (
    (b"Host", b"api.anthropic.com"),
    (b"X-Api-Key", b"sk-client"),
    (b"Accept", b"a"),
    (b"x-api-key", b"second"),
    (b"User-Agent", b"caf\xc3\xa9"),
)


def test_header_values_are_the_first_value_per_lower_cased_name() -> None:
    assert header_values(FIELDS) == {
        "host": "api.anthropic.com",
        "x-api-key": "sk-client",
        "accept": "a",
        "user-agent": "café",
    }
    assert header_values(FIELDS, frozenset({b"accept", b"x-api-key"})) == {
        "x-api-key": "sk-client",
        "accept": "a",
    }


def test_with_headers_replaces_in_place_drops_repeats_and_appends_the_new() -> None:
    changed = with_headers(FIELDS, {b"x-api-key": b"real", b"authorization": None, b"content-length": b"7"})
    assert changed == (
        (b"Host", b"api.anthropic.com"),
        (b"X-Api-Key", b"real"),  # first occurrence's place and casing
        (b"Accept", b"a"),
        (b"User-Agent", b"caf\xc3\xa9"),
        (b"content-length", b"7"),
    )


def test_with_headers_removes_every_occurrence() -> None:
    assert with_headers(FIELDS, {b"x-api-key": None}) == (FIELDS[0], FIELDS[2], FIELDS[4])


def test_rate_limit_values_keeps_only_what_a_reader_of_limits_needs() -> None:
    fields = (
        (b"Content-Type", b"application/json"),
        (b"Anthropic-Ratelimit-Unified-Status", b"allowed"),
        (b"x-ratelimit-remaining-tokens", b"10"),
        (b"x-ratelimit-remaining-tokens", b"99"),
        (b"Retry-After", b"3"),
        (b"retry-after-ms", b"2500"),
        (b"request-id", b"req_1"),
    )
    assert rate_limit_values(fields) == {
        "anthropic-ratelimit-unified-status": "allowed",
        "x-ratelimit-remaining-tokens": "10",
        "retry-after": "3",
        "retry-after-ms": "2500",
    }


def test_every_rate_limit_family_is_named_so_that_the_row_keeps_it():
    from addons.fields import RATE_LIMIT_MARKER
    from rules.providers import providers

    for known in providers():
        if known.window_prefix:
            assert RATE_LIMIT_MARKER in known.window_prefix, known.name
        if known.counted_limits is not None:
            assert RATE_LIMIT_MARKER in known.counted_limits.pattern, known.name
