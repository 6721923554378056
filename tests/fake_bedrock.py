"""The fake Amazon Bedrock Runtime endpoint (mounted by tests/fake_provider.py for
`bedrock-runtime.us-east-1.amazonaws.com`): InvokeModel, InvokeModelWithResponseStream, Converse and
ConverseStream on the real wire, errors as Bedrock gives them, and Bedrock's authentication.

Authentication, as Bedrock does it:
- a Bedrock API key as a bearer token (`Authorization: Bearer <key>`), accepted when it is one of the
  fake's `accepted_credentials` (any key when that is None);
- a SigV4 signature (`Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/bedrock/aws4_request,
  SignedHeaders=..., Signature=...`), recomputed with botocore from the secret the fake holds for the
  access key id (`FakeProvider.aws_credentials`: access key id -> (secret, session token or None)) over
  the request exactly as it arrived. An unknown key id is 403 UnrecognizedClientException, a signature
  that does not match (or a session token that is not the key's) 403 InvalidSignatureException, a
  signature older than 15 minutes 403 InvalidSignatureException "Signature expired", no credential at
  all 403 MissingAuthenticationTokenException.

Streams are AWS event-stream frames (`application/vnd.amazon.eventstream`), written by
rules/providers/bedrock/eventstream.py (checked against botocore's decoder in tests). Facts from the
API reference (https://docs.aws.amazon.com/bedrock/latest/APIReference/) and botocore's service model.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from rules.providers.bedrock.eventstream import event_frame, exception_frame

if TYPE_CHECKING:
    from tests.fake_provider import Behaviour, RecordedRequest, Usage

REGION = "us-east-1"
BEDROCK_HOST = f"bedrock-runtime.{REGION}.amazonaws.com"
SERVICE = "bedrock"
STREAM_TYPE = "application/vnd.amazon.eventstream"
DEFAULT_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
# `/model/{modelId}/{operation}`: the id percent-encoded (`:` as %3A, an ARN's `/` as %2F).
MODEL_PATH = re.compile(r"^/model/([^/?]+)/(invoke|invoke-with-response-stream|converse|converse-stream)$")
STREAMED = ("invoke-with-response-stream", "converse-stream")
MAX_SKEW_S = 15 * 60
# Bedrock pads every stream event with `p`, letters of a varying length (hiding the token lengths).
_PADDING = string.ascii_letters + string.digits

# status -> (error type, message) as Bedrock words them.
ERRORS = {
    400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: (
        "ResourceNotFoundException",
        "Could not resolve the foundation model from the provided model identifier.",
    ),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "An internal server error occurred. Retry your request."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
UNRECOGNIZED = ("UnrecognizedClientException", "The security token included in the request is invalid.")
BAD_SIGNATURE = (
    "InvalidSignatureException",
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details.",
)
NO_TOKEN = ("MissingAuthenticationTokenException", "Missing Authentication Token")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;.-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Refusal:
    status: int
    kind: str
    message: str


def error_body(kind: str, message: str) -> bytes:
    """Bedrock's error body: the message only; the type travels in `x-amzn-errortype`."""
    return json.dumps({"message": message}).encode()


def error_headers(kind: str, request_id: str) -> list[tuple[str, str]]:
    return [
        ("x-amzn-requestid", request_id),
        ("x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    ]


# --- authentication -------------------------------------------------------------------------------------


def authenticate(
    request: RecordedRequest,
    accepted: set[str] | None,
    aws_credentials: dict[str, tuple[str, str | None]],
    now: datetime | None = None,
) -> Refusal | None:
    """None when Bedrock would accept the request's credential; else its refusal."""
    auth = request.header("authorization") or ""
    if auth.lower().startswith("bearer "):
        key = auth[7:].strip()
        if accepted is None or key in accepted:
            return None
        return Refusal(403, *UNRECOGNIZED)
    if not auth:
        return Refusal(403, *NO_TOKEN)
    return _verify_sigv4(request, auth, aws_credentials, now or datetime.now(UTC))


def _verify_sigv4(
    request: RecordedRequest, auth: str, aws_credentials: dict[str, tuple[str, str | None]], now: datetime
) -> Refusal | None:
    found = _AUTH.match(auth.strip())
    if found is None:
        return Refusal(
            403,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.",
        )
    known = aws_credentials.get(found["akid"])
    if known is None:
        return Refusal(403, *UNRECOGNIZED)
    secret, token = known
    stamp = request.header("x-amz-date") or ""
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return Refusal(403, *BAD_SIGNATURE)
    if abs((now - signed_at).total_seconds()) > MAX_SKEW_S:
        return Refusal(
            403,
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than the allowed window.",
        )
    if found["date"] != stamp[:8] or found["service"] != SERVICE:
        return Refusal(403, *BAD_SIGNATURE)
    if token is not None and request.header("x-amz-security-token") != token:
        return Refusal(403, *UNRECOGNIZED)
    names = found["signed"].split(";")
    if "host" not in names:
        return Refusal(403, *BAD_SIGNATURE)
    headers = {name: ",".join(v.strip() for v in request.header_values(name)) for name in names}
    host = request.header("host") or BEDROCK_HOST
    aws_request = AWSRequest(
        method=request.method, url=f"https://{host}{request.target}", data=request.body, headers=headers
    )
    aws_request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(found["akid"], secret, token), SERVICE, found["region"])
    claimed_hash = request.header("x-amz-content-sha256")
    if claimed_hash not in (None, "UNSIGNED-PAYLOAD") and claimed_hash != signer.payload(aws_request):
        return Refusal(
            400,
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    expected = signer.signature(
        signer.string_to_sign(aws_request, signer.canonical_request(aws_request)), aws_request
    )
    if not hmac.compare_digest(expected, found["signature"]):
        return Refusal(403, *BAD_SIGNATURE)
    return None


# --- answers ----------------------------------------------------------------------------------------------


def operation(path: str) -> tuple[str, str] | None:
    """(model id, decoded; operation) of a Bedrock Runtime path, or None."""
    found = MODEL_PATH.match(path.split("?", 1)[0])
    return (unquote(found.group(1)), found.group(2)) if found else None


def invoke_usage(usage: Usage, *, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic's usage as Bedrock passes it on (no service tier; cache writes by TTL)."""
    found = usage.anthropic(output_tokens=output_tokens)
    found.pop("service_tier", None)
    return found


def converse_usage(usage: Usage) -> dict[str, Any]:
    writes = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    counts = {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + writes,
        "cacheReadInputTokens": usage.cache_read_tokens,
        "cacheWriteInputTokens": writes,
    }
    if usage.cache_write_1h_tokens:
        counts["cacheDetails"] = [
            {"ttl": "5m", "inputTokens": usage.cache_write_5m_tokens},
            {"ttl": "1h", "inputTokens": usage.cache_write_1h_tokens},
        ]
    return counts


def padded(body: dict[str, Any]) -> bytes:
    return json.dumps(
        {**body, "p": _PADDING[: 1 + secrets.randbelow(len(_PADDING))]}, separators=(",", ":")
    ).encode()


@dataclass
class Frame:
    """One event-stream frame, a stream unit of the fake (`event` its type, `data` its JSON payload; an
    exception when `exception`)."""

    event: str | None
    data: str
    exception: bool = False

    def encode(self) -> bytes:
        if self.exception:
            payload = json.loads(self.data)
            return exception_frame(self.event or "internalServerException", payload.get("message", ""))
        return event_frame(self.event or "chunk", self.data.encode())


def invoke_frames(
    message: dict[str, Any], anthropic_events: list[tuple[str, str]], usage: Usage
) -> list[Frame]:
    """InvokeModelWithResponseStream: each Anthropic event base64'd in a `chunk`; `message_stop` carries the
    invocation metrics (token counts as Bedrock bills them)."""
    frames = []
    for name, data in anthropic_events:
        event = json.loads(data)
        if name == "message_stop":
            event["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": usage.input_tokens,
                "outputTokenCount": usage.output_tokens,
                "invocationLatency": 412,
                "firstByteLatency": 187,
                "cacheReadInputTokenCount": usage.cache_read_tokens,
                "cacheWriteInputTokenCount": usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
            }
        encoded = base64.b64encode(json.dumps(event, separators=(",", ":")).encode()).decode()
        frames.append(Frame("chunk", padded({"bytes": encoded}).decode()))
    return frames


def converse_answer(text: str, stop_reason: str, usage: Usage) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": converse_usage(usage),
        "metrics": {"latencyMs": 412},
    }


def converse_frames(pieces: list[str], stop_reason: str, usage: Usage) -> list[Frame]:
    frames = [Frame("messageStart", padded({"role": "assistant"}).decode())]
    frames += [
        Frame("contentBlockDelta", padded({"contentBlockIndex": 0, "delta": {"text": p}}).decode())
        for p in pieces
    ]
    frames.append(Frame("contentBlockStop", padded({"contentBlockIndex": 0}).decode()))
    frames.append(Frame("messageStop", padded({"stopReason": stop_reason}).decode()))
    metadata = {"usage": converse_usage(usage), "metrics": {"latencyMs": 412}}
    frames.append(Frame("metadata", padded(metadata).decode()))
    return frames


def stream_exception(behaviour: Behaviour) -> Frame:
    """What ends a stream that fails part way: an exception frame (lower camel case, as in a stream)."""
    kind = behaviour.error_type or "throttlingException"
    message = behaviour.error_message or ERRORS[429][1]
    return Frame(kind[:1].lower() + kind[1:], json.dumps({"message": message}), exception=True)


def request_id() -> str:
    hexed = secrets.token_hex(16)
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
