"""What Bedrock's answers do to the key that got them (rules/provider_answers.py with Bedrock's classes):
the error type comes from `x-amzn-errortype`, as botocore reads it."""

from __future__ import annotations

import json

import pytest

from rules.provider_answers import judge_answer, read_error
from rules.providers.bedrock import BEDROCK

NOW = 1_800_000_000.0


def judge(status: int, kind: str, message: str = "", headers: dict[str, str] | None = None):
    body = json.dumps({"message": message}).encode()
    error = read_error(body, f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")
    return judge_answer(BEDROCK, status, headers or {}, error, "key", NOW)


def test_the_type_is_read_from_the_header_and_from_a_type_field():
    error = read_error(
        b'{"message":"Too many requests"}', "ThrottlingException:http://internal.amazon.com/coral/"
    )
    assert (error.type, error.code, error.message) == (
        "ThrottlingException",
        "ThrottlingException",
        "Too many requests",
    )
    own = read_error(b'{"message":"m","__type":"com.amazon.coral.service#UnrecognizedClientException"}')
    assert own.code == "UnrecognizedClientException"


def test_throttling_cools_the_key():
    verdict = judge(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    assert verdict.action == "cool" and verdict.seconds == 60.0


@pytest.mark.parametrize(
    ("status", "kind"), [(503, "ServiceUnavailableException"), (429, "ModelNotReadyException")]
)
def test_bedrock_busy_or_a_model_not_ready_is_bedrocks_state_not_the_keys(status: int, kind: str):
    assert judge(status, kind, "Bedrock is unable to process your request.").action == "overloaded"


@pytest.mark.parametrize("kind", ["UnrecognizedClientException", "AccessDeniedException"])
def test_a_key_bedrock_does_not_know_is_disabled(kind: str):
    verdict = judge(403, kind, "The security token included in the request is invalid.")
    assert verdict.action == "disable" and "security token" in verdict.reason
    assert judge(403, "UnrecognizedClientException", "").action == "disable"


@pytest.mark.parametrize(
    "message",
    [
        "You don't have access to the model with the specified model ID.",
        "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: bedrock:InvokeModel on "
        "resource: arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-1 because no "
        "identity-based policy allows the bedrock:InvokeModel action",
    ],
)
def test_access_denied_to_a_model_leaves_the_key_alone(message: str):
    """A client holding a client key asks for a model the account has not enabled: that is the model's
    answer, not the key's; the key must not be shelved for it (or any client could shelve every key)."""
    assert judge(403, "AccessDeniedException", message).action == "none"


def test_a_validation_error_says_nothing_of_the_key():
    assert judge(400, "ValidationException", "Malformed input request").action == "none"


def test_other_providers_envelopes_read_as_before():
    error = read_error(b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}', None)
    assert (error.type, error.message) == ("rate_limit_error", "slow")
