"""Bedrock as a provider (rules/providers/bedrock/__init__.py): its hosts and regions, its paths and models,
how its key is written, its error envelope as the AWS SDKs read it."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import EventStreamBuffer

from rules.providers import classify, find_wire_format, host_region, provider, provider_for_host, served_path
from rules.providers.bedrock import (
    BEDROCK,
    error_body,
    path_model,
    regional_host,
    sse_error_event,
    write_credential,
)


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("bedrock-runtime.us-east-1.amazonaws.com", "us-east-1"),
        ("bedrock-runtime.eu-central-1.amazonaws.com", "eu-central-1"),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("bedrock-runtime.ap-southeast-2.amazonaws.com", "ap-southeast-2"),
    ],
)
def test_a_regional_runtime_host_is_bedrocks_and_names_its_region(host: str, region: str):
    assert regional_host(host) == region
    assert host_region(host.upper() + ".") == region
    assert provider_for_host(host) is BEDROCK


@pytest.mark.parametrize(
    "host",
    [
        "bedrock.us-east-1.amazonaws.com",  # the control plane, not the runtime
        "bedrock-runtime.us-east-1.amazonaws.com.evil.test",
        "bedrock-runtime..amazonaws.com",
        "bedrock-runtime.us_east_1.amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.co",
        "xbedrock-runtime.us-east-1.amazonaws.com",
    ],
)
def test_no_other_host_is(host: str):
    assert regional_host(host) is None
    assert provider_for_host(host) is not BEDROCK


@pytest.mark.parametrize(
    ("path", "api", "model"),
    [
        (
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
            "bedrock_invoke",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream",
            "bedrock_invoke",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (
            "/model/global.anthropic.claude-opus-4-5-v1%3A0/converse",
            "bedrock_converse",
            "global.anthropic.claude-opus-4-5-v1:0",
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse-stream",
            "bedrock_converse",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
        ),
    ],
)
def test_the_operation_and_model_come_from_the_path(path: str, api: str, model: str):
    endpoint = classify("POST", path)
    assert endpoint is not None and endpoint.api == api and endpoint.provider == "bedrock"
    assert path_model(served_path(path)) == model


@pytest.mark.parametrize(
    "path", ["/invoke", "/v1/functions/x/invoke", "/model/x/invoke-async", "/model/x/count-tokens"]
)
def test_a_path_that_is_not_a_runtime_operation_is_not_bedrocks(path: str):
    endpoint = classify("POST", path)
    assert endpoint is None or endpoint.provider != "bedrock"


def test_the_key_is_written_as_a_bearer_token_and_a_session_token_goes():
    changes = write_credential(
        {"authorization": "Bearer client", "x-amz-security-token": "t"}, "ABSKreal", "key"
    )
    assert changes[b"authorization"] == b"Bearer ABSKreal"
    assert changes[b"x-amz-security-token"] is None
    assert BEDROCK.key_headers == ("authorization",)
    assert BEDROCK.key_variables == ("AWS_BEARER_TOKEN_BEDROCK",)


def test_the_header_families_the_sdks_and_bedrock_use_pass():
    assert {"x-amz-*", "x-amzn-*", "amz-sdk-*"} <= set(BEDROCK.request_headers)
    assert "x-amzn-*" in BEDROCK.response_headers


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "ValidationException"),
        (401, "UnrecognizedClientException"),
        (403, "AccessDeniedException"),
        (429, "ThrottlingException"),
        (503, "ServiceUnavailableException"),
        (502, "InternalServerException"),
    ],
)
def test_sluices_own_errors_are_bedrocks_envelope_with_the_type_botocore_reads(status: int, kind: str):
    body = json.loads(error_body(status, "no client key"))
    assert body == {"message": "no client key", "__type": kind}


def test_an_in_stream_error_is_an_exception_frame_botocore_decodes():
    buffer = EventStreamBuffer()
    buffer.add_data(sse_error_event(429, "budget spent"))
    [message] = list(buffer)
    assert message.headers[":message-type"] == "exception"
    assert message.headers[":exception-type"] == "throttlingException"
    assert json.loads(message.payload) == {"message": "budget spent"}


def test_it_is_priced_as_amazon_bills_it():
    assert provider("bedrock").pricing_id == "aws"
    wire = find_wire_format("bedrock_invoke")
    assert wire is not None and wire.stream_framing == "eventstream"
