from __future__ import annotations

import json

import pytest

from rules.credential_files import (
    OAuthTokens,
    TokenResponse,
    oauth_error,
    parse_oauth_credentials,
    token_response,
)
from rules.secrets import fingerprint


def test_parse_claude_code_credentials():
    text = json.dumps(
        {
            "claudeAiOauth": {
                "accessToken": "sk-ant-oat01-abc",
                "refreshToken": "sk-ant-ort01-def",
                "expiresAt": 1_800_000_000_000,
                "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "max",
            }
        }
    )
    tokens = parse_oauth_credentials(text)
    assert tokens == OAuthTokens(
        "sk-ant-oat01-abc", "sk-ant-ort01-def", 1_800_000_000.0, ("user:inference", "user:profile")
    )
    assert "sk-ant" not in repr(tokens)


def test_parse_flat_and_long_lived_credentials():
    flat = parse_oauth_credentials('{"access_token": "at", "refresh_token": "rt", "expires_at": 1800000000}')
    assert (flat.access_token, flat.refresh_token, flat.expires_at) == ("at", "rt", 1_800_000_000.0)
    bare = parse_oauth_credentials("sk-ant-oat01-long-lived\n")
    assert (bare.access_token, bare.refresh_token, bare.expires_at) == ("sk-ant-oat01-long-lived", None, None)
    assert bare.identity == fingerprint("sk-ant-oat01-long-lived")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"claudeAiOauth": {"refreshToken": "sk-ant-ort01-secret"}}', "no claudeAiOauth.accessToken"),
        ('{"access_token": "sk-secret", "expires_at": "tomorrow"}', "expires_at must be a number"),
        ("two words", "neither JSON nor a single token"),
    ],
)
def test_bad_credentials_files_name_the_field_not_the_value(text, message):
    with pytest.raises(ValueError, match=message) as raised:
        parse_oauth_credentials(text)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sk-ant-oat01-abc\x07def", "the OAuth token cannot be used: it contains a control character"),
        (
            '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-a\\r\\nX-Evil: 1", "refreshToken": "r"}}',
            "claudeAiOauth.accessToken cannot be used: it contains a line break",
        ),
        (
            '{"access_token": "a", "refresh_token": "sk-ant-ort01-\\nGET / HTTP/1.1"}',
            "refresh_token cannot be used: it contains a line break",
        ),
    ],
)
def test_oauth_tokens_that_would_break_a_header_are_refused_without_quoting_them(
    text: str, reason: str
) -> None:
    with pytest.raises(ValueError) as e:
        parse_oauth_credentials(text)
    assert reason in str(e.value)
    assert "Evil" not in str(e.value) and "GET" not in str(e.value)


# -- the token endpoint's answers ------------------------------------------------------------------------


def test_a_token_answer_gives_the_new_tokens_and_their_lifetime():
    answer = token_response({"access_token": "access-2", "refresh_token": "refresh-2", "expires_in": 28800})
    assert answer == TokenResponse("access-2", "refresh-2", 28800.0)
    assert "access-2" not in repr(answer)
    kept = token_response({"access_token": "access-3", "refresh_token": ""})  # the old refresh token stays
    assert (kept.refresh_token, kept.expires_in) == (None, 3600.0)


@pytest.mark.parametrize("expires_in", [float("nan"), float("inf"), -3600, 0, "3600", True, None])
def test_a_lifetime_that_is_no_number_of_seconds_counts_as_an_hour(expires_in: object) -> None:
    answer = token_response({"access_token": "access-2", "expires_in": expires_in})
    assert answer.expires_in == 3600.0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "has no access_token"),
        ({"refresh_token": "sk-ant-ort01-secret"}, "has no access_token"),
        ({"access_token": ""}, "has no access_token"),
        (
            {"access_token": "sk-ant-oat01-secret\r\nX-Evil: 1"},
            "access_token cannot be used: it contains a line",
        ),
        ({"access_token": "a", "refresh_token": "sk-ant-ort01-secret x"}, "refresh_token cannot be used"),
    ],
)
def test_a_token_answer_that_cannot_be_used_is_refused_without_quoting_it(
    payload: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        token_response(payload)
    assert "secret" not in str(raised.value) and "Evil" not in str(raised.value)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"error": "invalid_grant", "error_description": "Refresh token revoked"}',
            ("invalid_grant", "Refresh token revoked"),
        ),
        (b'{"error": {"type": "invalid_request_error", "message": "bad"}}', ("invalid_request_error", "bad")),
        (
            b'{"error": "x", "error_description": "a\\r\\nForged: line \\u001b[2J"}',
            ("x", "a??Forged: line ?[2J"),
        ),
        (b"<html>\x1b]0;title\x07</html>", ("", "<html>?]0;title?</html>")),
        (b'{"error": "x", "error_description": "' + b"y" * 500 + b'"}', ("x", "y" * 200)),
    ],
)
def test_a_token_endpoints_error_is_kept_as_printable_text(body: bytes, error: tuple[str, str]) -> None:
    assert oauth_error(body) == error
