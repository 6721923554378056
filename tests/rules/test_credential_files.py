from __future__ import annotations

import json

import pytest

from rules.credential_files import OAuthTokens, parse_oauth_credentials
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
