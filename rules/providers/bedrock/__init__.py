"""Amazon Bedrock Runtime: Claude (and any model Bedrock serves) on
`bedrock-runtime.{region}.amazonaws.com` (and `bedrock-runtime-fips.{region}.amazonaws.com`), through
InvokeModel (`POST /model/{modelId}/invoke`, an Anthropic Messages body; `/invoke-with-response-stream`) and
Converse (`/model/{modelId}/converse`, Bedrock's own body; `/converse-stream`).
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_Operations_Amazon_Bedrock_Runtime.html

The model is the path's (`us.anthropic.claude-sonnet-4-5-20250929-v1:0`, an inference profile id, an ARN,
percent-encoded); the region the host's. Streams are AWS event-stream frames
(`application/vnd.amazon.eventstream`), read frame by frame (addons/event_frames.py).

Keys: a Bedrock API key is a bearer token (`Authorization: Bearer <key>`, boto3's and Claude Code's
`AWS_BEARER_TOKEN_BEDROCK`); sluice writes the real one there like any key. SigV4-signed requests (AWS key
pairs) are another matter, handled where the proxy verifies and re-signs them.
Errors: `{"message": ...}` with the type in `x-amzn-errortype` (`ThrottlingException:http://...`); sluice's
own answers put it in the body's `__type` as well, which botocore and the other AWS SDKs read when the
header is absent (botocore's RestJSONParser: `__type`, else `x-amzn-errortype`, cut at `:` and `#`).
Priced as genai-prices' `aws` (Amazon bills Bedrock calls).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

from rules.providers import Provider, WireFormat, register
from rules.providers.anthropic import MESSAGES
from rules.providers.bedrock import converse, invoke
from rules.providers.bedrock.eventstream import exception_frame

# status -> Bedrock's error type (https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html)
_ERROR_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",  # sluice's own refusal of a missing client key (Bedrock says 403)
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    413: "ValidationException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
# In a stream the same exceptions are spelt in lower camel case (`:exception-type: throttlingException`).
_HOST_PREFIXES = ("bedrock-runtime.", "bedrock-runtime-fips.")
_HOST_SUFFIX = ".amazonaws.com"
ERROR_TYPE_HEADER = "x-amzn-errortype"


def error_type(status: int, code: str | None = None) -> str:
    return code or _ERROR_TYPES.get(
        status, "InternalServerException" if status >= 500 else "ValidationException"
    )


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    body = {"message": message, "__type": error_type(status, code)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sse_error_event(status: int, message: str) -> bytes:
    """An exception frame ending an event stream (its name is sse_ by the seam's history)."""
    kind = error_type(status)
    return exception_frame(kind[:1].lower() + kind[1:], message)


def write_credential(headers: Mapping[str, str], secret: str, kind: str) -> dict[bytes, bytes | None]:
    """A Bedrock API key as a bearer token; a session token a client may have sent goes with its signature."""
    return {b"authorization": b"Bearer " + secret.encode(), b"x-amz-security-token": None, b"x-api-key": None}


def regional_host(host: str) -> str | None:
    """`bedrock-runtime.us-east-1.amazonaws.com` -> `us-east-1` (and the FIPS endpoints); None otherwise."""
    for prefix in _HOST_PREFIXES:
        if host.startswith(prefix) and host.endswith(_HOST_SUFFIX):
            region = host[len(prefix) : -len(_HOST_SUFFIX)]
            if region and all(
                (part.isalnum() and part.islower()) or part.isdigit() for part in region.split("-")
            ):
                return region
    return None


BEDROCK = Provider(
    name="bedrock",
    hosts=(),
    sigv4_service="bedrock",
    # SigV4's x-amz-date / x-amz-content-sha256 / x-amz-security-token, the SDKs' amz-sdk-invocation-id /
    # amz-sdk-request / x-amz-user-agent, Bedrock's x-amzn-bedrock-* (trace, guardrails, performance
    # config, service tier) and x-amzn-trace-id.
    request_headers=("x-amz-*", "x-amzn-*", "amz-sdk-*"),
    # x-amzn-requestid, x-amzn-errortype, x-amzn-bedrock-invocation-latency / -input-token-count /
    # -output-token-count / -cache-*-token-count, x-amz-apigw-id, x-amzn-trace-id.
    response_headers=("x-amzn-*", "x-amz-*"),
    error_body=error_body,
    sse_error_event=sse_error_event,
    write_credential=write_credential,
    # A client key travels as a Bedrock API key (bearer). A session token (`x-amz-security-token`) belongs to
    # a SigV4 signature, not to a client key: it is no place to look for one.
    key_headers=("authorization",),
    key_variables=("AWS_BEARER_TOKEN_BEDROCK",),
    overloaded_status=503,
    pricing_id="aws",
    regional_host=regional_host,
    error_type_header=ERROR_TYPE_HEADER,
    # A key Bedrock does not know (revoked, deleted, of another partition): the credential, for good. Not
    # AccessDeniedException as such: Bedrock answers it for a model the account has no access to ("You
    # don't have access to the model with the specified model ID.", an IAM policy naming the model), so a
    # client could shelve every key by asking for such a model. It disables a key only when its message is
    # about the key itself.
    terminal_codes=("UnrecognizedClientException",),
    terminal_words=(
        "security token included in the request is invalid",
        "security token included in the request is expired",
        "bearer token has expired",
        "api key is invalid",
        "api key has been revoked",
    ),
    overloaded_answers=((503, None), (None, "ServiceUnavailableException"), (None, "ModelNotReadyException")),
    example_model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
)

INVOKE_SUFFIXES = ("/invoke", "/invoke-with-response-stream")
CONVERSE_SUFFIXES = ("/converse", "/converse-stream")


def path_model(path: str) -> str | None:
    """The model a served path names: `/model/{modelId}/{operation}`, the id percent-decoded already (an ARN
    keeps its slashes: everything between `/model/` and the operation)."""
    _, found, rest = path.split("?", 1)[0].partition("/model/")
    model, slash, operation = rest.rpartition("/")
    if not found or not slash or not model or "/" + operation not in (*INVOKE_SUFFIXES, *CONVERSE_SUFFIXES):
        return None
    return model


# Anthropic's Messages as Bedrock carries it: Anthropic's readers, request hooks, cache markers and transcript
# (rules/providers/anthropic), with Bedrock's paths, frames and provider. Not "alias" (the model is the
# path's, the body has none) nor "user_id" (Bedrock's Messages body takes no `metadata`).
INVOKE = replace(
    MESSAGES,
    name="bedrock_invoke",
    provider=BEDROCK,
    path_suffixes=INVOKE_SUFFIXES,
    path_contains="/model/",
    path_model=path_model,
    stream_framing="eventstream",
    stream_events=invoke.InvokeEvents,
    stream_parts=invoke.InvokeStream,
    rule_set=frozenset({"billing", "system", "max_tokens", "cache"}),
)

CONVERSE = WireFormat(
    name="bedrock_converse",
    provider=BEDROCK,
    path_suffixes=CONVERSE_SUFFIXES,
    path_contains="/model/",
    path_model=path_model,
    stream_framing="eventstream",
    read_body=converse.read_body,
    stream_events=converse.ConverseEvents,
    terminal_event=converse.TERMINAL,
    output_fields=("inferenceConfig.maxTokens",),
    body_parts=converse.body_parts,
    stream_parts=converse.ConverseStream,
    outline=converse.outline,
    rule_set=frozenset({"system"}),
    inject_system=converse.inject_system,
    messages_field="messages",
    system_field="system",
)

register(INVOKE, CONVERSE)
