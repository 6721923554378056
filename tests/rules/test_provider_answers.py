from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from rules.provider_answers import (
    MAX_COOLDOWN_S,
    Breaker,
    ErrorFields,
    class_words,
    client_wrote,
    headroom,
    judge_answer,
    parse_cooldown,
    quota_status,
    read_error,
)
from rules.providers import Provider, provider

FIXTURES = Path(__file__).parent.parent / "fixtures" / "provider_answers"
NOW = 1_796_000_000.0


GEMINI = Path(__file__).parent.parent / "fixtures" / "gemini"
ANTHROPIC = provider("anthropic")


def _provider(answer: dict[str, Any]) -> Provider:
    """The provider a recorded answer came from: its fixture says so."""
    return provider(answer["provider"])


def _fixtures() -> list[Any]:
    paths = [*sorted(FIXTURES.glob("*.json")), *sorted(GEMINI.glob("error_*.json"))]
    return [pytest.param(json.loads(path.read_text()), id=path.stem) for path in paths]


def test_every_fixture_says_where_its_shape_comes_from() -> None:
    for path in FIXTURES.glob("*.json"):
        assert len(json.loads(path.read_text())["provenance"]) > 40, path.name


@pytest.mark.parametrize("answer", _fixtures())
def test_each_recorded_answer_moves_the_pool_its_own_way(answer: dict[str, Any]) -> None:
    body = json.dumps(answer["body"]).encode()
    verdict = judge_answer(
        _provider(answer),
        answer["status"],
        answer["headers"],
        read_error(body),
        answer["kind"],
        answer["now"],
    )
    expect = answer["expect"]
    assert verdict.action == expect["action"]
    if "seconds" in expect:
        assert verdict.seconds == pytest.approx(expect["seconds"])
    for words in expect.get("reason_has", []):
        assert words in verdict.reason


def test_an_api_key_refused_is_disabled_where_an_oauth_token_is_refreshed() -> None:
    refused = ErrorFields("authentication_error", "", "invalid bearer token")
    assert judge_answer(ANTHROPIC, 401, {}, refused, "key", NOW).action == "disable"
    assert judge_answer(ANTHROPIC, 401, {}, refused, "oauth", NOW).action == "reauth"


def test_a_window_names_the_window_and_when_it_resets() -> None:
    headers = {
        "Anthropic-Ratelimit-Unified-Status": "rejected",
        "anthropic-ratelimit-unified-7d-status": "rejected",
        "anthropic-ratelimit-unified-7d-reset": str(int(NOW) + 86_400),
    }
    verdict = judge_answer(ANTHROPIC, 429, headers, ErrorFields(), "oauth", NOW)
    assert verdict.action == "window"
    assert verdict.seconds == pytest.approx(86_400)
    assert verdict.reason.startswith("429 7d window exhausted until 2026-")


def test_a_window_reset_in_the_past_or_absurd_is_bounded() -> None:
    past = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1500000000",
    }
    assert judge_answer(ANTHROPIC, 429, past, ErrorFields(), "oauth", NOW).seconds == 300
    far = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "9999999999",
    }
    assert judge_answer(ANTHROPIC, 429, far, ErrorFields(), "oauth", NOW).seconds == MAX_COOLDOWN_S


@pytest.mark.parametrize("status", [200, 404, 413, 500, 502])
def test_answers_that_say_nothing_of_the_credential_move_nothing(status: int) -> None:
    assert (
        judge_answer(ANTHROPIC, status, {}, ErrorFields("api_error", "", "boom"), "key", NOW).action == "none"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"error": 3}',
        b'{"error": {"message": ["x"]}}',
        b"{" * 100_000,
        b" " * 70_000,
    ],
)
def test_read_error_never_raises(body: bytes) -> None:
    fields = read_error(body)
    assert isinstance(fields.message, str)


def test_read_error_reads_both_envelopes() -> None:
    anthropic = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    assert read_error(anthropic) == ErrorFields("rate_limit_error", "", "slow down")
    openai = b'{"error":{"message":"m","type":"insufficient_quota","code":"insufficient_quota"}}'
    assert read_error(openai) == ErrorFields("insufficient_quota", "insufficient_quota", "m")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "9"}, 9),
        ({"retry-after": "Thu, 01 Jan 2026 00:00:00 GMT"}, 0),
        ({"retry-after": "soon"}, 60),
        ({"retry-after": "1e400"}, 60),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360),
        ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6m0s"}, 60),
        (
            {
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(int(NOW) + 90),
            },
            90,
        ),
        ({}, 60),
    ],
)
def test_parse_cooldown(headers: dict[str, str], expected: float) -> None:
    assert parse_cooldown(headers, NOW, 60) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        (
            {
                "anthropic-ratelimit-unified-5h-utilization": "0.25",
                "anthropic-ratelimit-unified-7d-utilization": "0.6",
            },
            0.4,
        ),
        ({"anthropic-ratelimit-tokens-limit": "1000", "anthropic-ratelimit-tokens-remaining": "250"}, 0.25),
        ({"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "90"}, 0.9),
        ({"x-ratelimit-limit-requests": "0", "x-ratelimit-remaining-requests": "0"}, None),
        ({"anthropic-ratelimit-unified-5h-utilization": "1.7"}, 0.0),
        ({"anthropic-ratelimit-unified-5h-utilization": "nan"}, None),
    ],
)
def test_headroom_is_the_tightest_limit_left(headers: dict[str, str], expected: float | None) -> None:
    assert headroom(headers) == (pytest.approx(expected) if expected is not None else None)


def test_quota_status_is_read_only_when_well_formed() -> None:
    assert quota_status({"Anthropic-Ratelimit-Unified-Status": "allowed_warning"}) == "allowed_warning"
    assert quota_status({"anthropic-ratelimit-unified-status": "x\r\ny"}) is None
    assert quota_status({}) is None


def test_the_breaker_opens_after_a_burst_and_closes_on_the_first_good_answer() -> None:
    breaker = Breaker(threshold=3, window_s=10, min_open_s=2, max_open_s=30)
    assert breaker.overloaded(0, None) is None
    assert breaker.overloaded(1, None) is None
    assert breaker.open_for(1) is None
    assert breaker.overloaded(2, 12) == 12  # the provider's own retry time
    assert breaker.open_for(5) == pytest.approx(9)
    assert breaker.overloaded(6, None) is None  # an answer to a request sent before it opened
    assert breaker.succeeded(8) is False  # still open: nothing closes it early
    assert breaker.open_for(14) is None  # half-open: requests go upstream again
    assert breaker.overloaded(14, 100) == 30  # one overloaded answer re-opens it, for at most max_open_s
    assert breaker.succeeded(45) is True
    assert breaker.overloaded(46, None) is None  # closed again: counting starts over


def test_the_breaker_forgets_overloads_outside_its_window() -> None:
    breaker = Breaker(threshold=3, window_s=10)
    for moment in (0, 11, 22, 33):
        assert breaker.overloaded(moment, None) is None
    assert breaker.open_for(33) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250.5", "retry-after": "9"}, 0.2505),  # ms wins, names are case-insensitive
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after": format_datetime(datetime.fromtimestamp(NOW + 120, UTC), usegmt=True)}, 120.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: retry now
        ({"retry-after": "soon"}, 60.0),
        ({"retry-after": "-5"}, 60.0),
        ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
        ({"retry-after": "99999999999"}, 7 * 24 * 3600.0),  # capped
        ({}, 60.0),
        (
            {
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(int(NOW + 3600)),
            },
            3600.0,
        ),
        (
            {
                "anthropic-ratelimit-unified-status": "allowed_warning",
                "anthropic-ratelimit-unified-reset": str(int(NOW + 3600)),
            },
            60.0,
        ),
    ],
)
def test_parse_cooldown_reads_retry_times(headers: dict[str, str], expected: float) -> None:
    assert parse_cooldown(headers, NOW, 60.0) == pytest.approx(expected)


# -- the client's own words repeated ------------------------------------------------------------------------

ECHOED_MODEL = ErrorFields("not_found_error", "", "model: This organization has been disabled.")


def test_words_the_client_wrote_and_the_provider_repeated_move_no_key() -> None:
    body = json.dumps({"model": "This organization has been disabled.", "messages": []}).encode()
    words = class_words(ANTHROPIC, ECHOED_MODEL)
    assert words == ("organization has been disabled",)
    echoed = client_wrote(words, body, ["/v1/messages"])
    assert judge_answer(ANTHROPIC, 404, {}, ECHOED_MODEL, "key", NOW, echoed).action == "none"
    # Without the check the same answer would take the key from everyone.
    assert judge_answer(ANTHROPIC, 404, {}, ECHOED_MODEL, "key", NOW).action == "disable"


def test_words_are_found_however_the_client_spelled_them() -> None:
    words = ("credit balance is too low",)
    escaped = b'{"model": "Your Credit balance is too l\\u006fw"}'
    assert client_wrote(words, escaped, []) == frozenset(words)
    assert client_wrote(words, b"{}", ["/v1/messages?x=credit%20balance%20is%20too%20low"]) == frozenset()
    assert client_wrote(words, b"{}", ["/v1/messages?x=credit balance is too low"]) == frozenset(words)
    assert client_wrote(words, b"{}", ["credit  balance\tis too LOW"]) == frozenset(words)
    # A window's words on a 429 are the client's too when it wrote them.
    limited = ErrorFields("rate_limit_error", "", "Rate limit reached for model `extra usage`")
    echoed = client_wrote(class_words(ANTHROPIC, limited), b'{"model": "extra usage"}', [])
    assert judge_answer(ANTHROPIC, 429, {}, limited, "key", NOW, echoed).action == "cool"


def test_a_body_that_cannot_be_read_makes_every_word_the_clients() -> None:
    words = ("organization has been disabled",)
    assert client_wrote(words, None, []) == frozenset(words)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert client_wrote(words, deep, []) == frozenset(words)


def test_the_providers_own_words_still_disable_the_key() -> None:
    terminal = ErrorFields("invalid_request_error", "", "This organization has been disabled.")
    body = json.dumps({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}).encode()
    echoed = client_wrote(class_words(ANTHROPIC, terminal), body, ["/v1/messages", "2023-06-01"])
    assert echoed == frozenset()
    assert judge_answer(ANTHROPIC, 400, {}, terminal, "key", NOW, echoed).action == "disable"


def test_each_provider_is_judged_by_its_own_words_and_codes() -> None:
    quota = ErrorFields("insufficient_quota", "insufficient_quota", "You exceeded your current quota")
    assert judge_answer(provider("openai"), 429, {}, quota, "key", NOW).action == "disable"
    unavailable = ErrorFields("UNAVAILABLE", "", "The model is overloaded.")
    assert judge_answer(provider("gemini"), 503, {}, unavailable, "key", NOW).action == "overloaded"
    assert judge_answer(ANTHROPIC, 503, {}, unavailable, "key", NOW).action == "none"
    spent = {"anthropic-ratelimit-unified-status": "rejected"}
    assert judge_answer(ANTHROPIC, 429, spent, ErrorFields(), "oauth", NOW).action == "window"
    assert judge_answer(provider("openai"), 429, spent, ErrorFields(), "key", NOW).action == "cool"
