"""A local fake of the Anthropic, OpenAI and Google Gemini HTTP APIs, for end-to-end tests and benchmarks.

It speaks the providers' real wire formats (JSON bodies, SSE streams, error envelopes, rate-limit headers)
over HTTP/1.1, with TLS or without, from a background thread of the test process. Each test scripts what
the next request gets with `fake.next(...)`; everything the fake received is kept in `fake.requests`.
It also plays the OAuth token endpoint (`POST /v1/oauth/token`): `fake.grant(refresh, access, new_refresh)`
lets one refresh token be exchanged, once; any other gets `invalid_grant`. And the OAuth usage endpoint
(`GET /api/oauth/usage` on the Anthropic host, what Claude Code's `/usage` reads): it answers
`fake.oauth_usage` (a realistic answer by default) to a bearer token the fake issued through a grant or was
told of with `fake.know_token(...)`, and 401 to any other.

Gemini (`generativelanguage.googleapis.com`, or any host for a `/v1[beta]/models/{model}:{method}` path):
`generateContent`, `streamGenerateContent` (SSE with `?alt=sse`, else one JSON array), `countTokens` and the
models list. The key is read from `x-goog-api-key` or `?key=`; with `accepted_credentials` set, a wrong key
gets Google's 400 API_KEY_INVALID and a missing one 403 PERMISSION_DENIED. `fake.next(status=429)` answers
RESOURCE_EXHAUSTED with a QuotaFailure and a RetryInfo (`retry_delay="45.8s"`, `None` for none;
`quota_id=...PerDay...` for a daily quota); `thinking=` adds a thought summary, `usage=Usage(...,
reasoning_tokens=N)` the thoughts' count.

The HTTP/1.1 side is written by hand on purpose: the faults a proxy must survive (an SSE record split across
two TCP writes, a stream cut before its terminal frame, a stall, a TCP reset) need control over every write,
which a framework would take away.

Run it alone for manual checks or benchmarks:

    python -m tests.fake_provider --port 8443            # TLS, prints the CA to trust
    python -m tests.fake_provider --port 8080 --plain    # plain HTTP, e.g. behind a reverse proxy
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http
import json
import math
import re
import secrets
import socket
import ssl
import string
import struct
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import brotli
import zstandard

from tests import fake_bedrock, fake_vertex

if TYPE_CHECKING:
    from tests.fake_accounts import KeyLimits, PromptCache

Provider = Literal["anthropic", "openai", "gemini", "bedrock"]
_Ending = Literal["keep-alive", "close", "cut"]
Encoding = Literal["gzip", "br", "zstd"]

ANTHROPIC_HOST = "api.anthropic.com"
OPENAI_HOST = "api.openai.com"
PROVIDER_HOSTS = (ANTHROPIC_HOST, OPENAI_HOST)
# Where Claude Code refreshes its OAuth tokens (RFC 6749 §6); the fake serves `OAUTH_TOKEN_PATH` there.
OAUTH_HOST = "console.anthropic.com"
OAUTH_TOKEN_PATH = "/v1/oauth/token"
# The subscription usage endpoint (not documented by Anthropic: rules/providers/anthropic/oauth_usage.py
# says what is known).
OAUTH_USAGE_PATH = "/api/oauth/usage"
OAUTH_BETA = "oauth-2025-04-20"
# Paths a behaviour queued for "any path" never takes: they are sluice's own calls, not the client's.
_OWN_PATHS = (OAUTH_TOKEN_PATH, OAUTH_USAGE_PATH, fake_vertex.TOKEN_PATH)
# The usage endpoint's refusals as users reported them: a login without the profile scope
# (anthropics/claude-code issues #12529 and #13334, 2025-11/12; request id left out) and its own rate limit
# (anthropics/claude-code issue #31021 and others, 2026-03).
USAGE_SCOPE_403 = {
    "type": "error",
    "error": {
        "type": "permission_error",
        "message": "OAuth token does not meet scope requirement user:profile",
        "details": {"error_visibility": "user_facing"},
    },
}
USAGE_RATE_LIMITED_429 = {
    "error": {"type": "rate_limit_error", "message": "Rate limited. Please try again later."}
}
# A host that is not a provider's own API (a gateway in front of one): `.test` never resolves for real.
GATEWAY_HOST = "gateway.sluice.test"
# The Gemini API (Google AI Studio keys; not Vertex AI): https://ai.google.dev/api/generate-content
GEMINI_HOST = "generativelanguage.googleapis.com"
# Every name the harness resolves to the fake.
OPENROUTER_HOST = "openrouter.ai"  # a gateway genai-prices prices (OpenAI's wire format)
# Amazon Bedrock Runtime in us-east-1 (tests/fake_bedrock.py)
BEDROCK_HOST = fake_bedrock.BEDROCK_HOST
TEST_HOSTS = (
    *PROVIDER_HOSTS,
    OAUTH_HOST,
    GATEWAY_HOST,
    GEMINI_HOST,
    OPENROUTER_HOST,
    BEDROCK_HOST,
    fake_vertex.VERTEX_HOST,
    fake_vertex.GOOGLE_TOKEN_HOST,
)

DEFAULT_TEXT = "Hello from the fake provider."
MAX_HEADER_BYTES = 64 * 1024

# HTTPStatus lacks the provider-specific codes.
_EXTRA_REASONS = {529: "Overloaded"}

# Error types per status, from the providers' error documentation:
# https://docs.anthropic.com/en/api/errors and https://platform.openai.com/docs/guides/error-codes
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}
# Google's status names and messages per HTTP status, as the Gemini API words them
# (https://ai.google.dev/gemini-api/docs/troubleshooting, and answers users posted: tests/fixtures/gemini/).
_GEMINI_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
        "other valid authentication credential.",
    ),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
GEMINI_NO_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or "
    "other form of API consumer identity to call this API."
)
GEMINI_BAD_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass(frozen=True)
class Usage:
    """Token counts in sluice's own column meanings; the fake spells them the way each provider does.

    `input_tokens` is uncached input only and `output_tokens` includes `reasoning_tokens`, so a test can
    compare a `calls` row with these numbers directly. On the OpenAI wire `cache_read_tokens` becomes
    `cached_tokens` and is added back into `prompt_tokens` / `input_tokens`; cache writes have no OpenAI
    spelling and are left out there.
    """

    input_tokens: int = 21
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 9
    reasoning_tokens: int = 0
    # Gemini only: tokens of tool results (Google Search, code execution) fed back to the model as input;
    # `toolUsePromptTokenCount`, outside `promptTokenCount`.
    tool_use_prompt_tokens: int = 0

    def anthropic(self, *, output_tokens: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write_5m_tokens + self.cache_write_1h_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            },
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }

    def openai_chat(self) -> dict[str, Any]:
        prompt = self.input_tokens + self.cache_read_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.output_tokens,
            "total_tokens": prompt + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def gemini(self, *, output_tokens: int | None = None, with_output: bool = True) -> dict[str, Any]:
        """`usageMetadata`: `promptTokenCount` includes the cached tokens, `candidatesTokenCount` excludes the
        thoughts, `totalTokenCount` is prompt + candidates + thoughts + tool-use prompt. Zero counts are left
        out, as protobuf JSON leaves out default values. `output_tokens` (thoughts included) overrides the
        output so far, for a stream's cumulative chunks; `with_output=False` is a chunk before any answer."""
        output = self.output_tokens if output_tokens is None else output_tokens
        thoughts = min(self.reasoning_tokens, output)
        candidates = output - thoughts if with_output else 0
        prompt = self.input_tokens + self.cache_read_tokens
        counts = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "cachedContentTokenCount": self.cache_read_tokens,
            "toolUsePromptTokenCount": self.tool_use_prompt_tokens,
            "thoughtsTokenCount": self.reasoning_tokens,
            "totalTokenCount": prompt + candidates + self.reasoning_tokens + self.tool_use_prompt_tokens,
        }
        usage: dict[str, Any] = {k: v for k, v in counts.items() if v}
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if self.cache_read_tokens:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cache_read_tokens}]
        return usage

    def openai_responses(self) -> dict[str, Any]:
        total_input = self.input_tokens + self.cache_read_tokens
        return {
            "input_tokens": total_input,
            "input_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": total_input + self.output_tokens,
        }


@dataclass
class Behaviour:
    """What the fake does with one request. Every field has a realistic default.

    Stream faults count *units*: for a streamed response a unit is one SSE record; for a plain response the
    body is one unit (two halves with `split=True`). `truncate_after=N` sends the headers and N units and
    then closes the connection without the terminal frame; `reset_after=N` does the same with a TCP RST;
    `stall_after=N` waits `stall_seconds` (or until `resume` is set) after N units and then carries on;
    `error_after=N` replaces the
    rest of a stream with the provider's in-stream error record and ends the stream cleanly.
    """

    # Consumed only by a request to this path (query string ignored); None matches any path.
    path: str | None = None
    # A canned response: `status` alone gives that status in the provider's error envelope (with a
    # `retry-after` for 429/529); `body` (bytes, str, or JSON-able) is sent verbatim with `status` or 200.
    status: int | None = None
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    # Response headers to set after the generated ones: a name replaces every header of that name
    # (case-insensitive); a None value removes it.
    headers: Sequence[tuple[str, str | None]] = ()
    # Response headers appended last, as given: repeated names stay repeated, nothing is replaced.
    added_headers: Sequence[tuple[str, str]] = ()
    # The generated response.
    text: str = DEFAULT_TEXT
    thinking: str | None = None
    usage: Usage = field(default_factory=Usage)
    usage_extra: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    stop_reason: str | None = None
    message_deltas: int = 1
    responses_status: Literal["completed", "failed", "incomplete"] = "completed"
    ratelimit_headers: bool = True
    # Gemini's 429 RESOURCE_EXHAUSTED: the `google.rpc.RetryInfo` delay (a protobuf Duration, "17s" or
    # "45.837906927s"; None leaves RetryInfo out) and the `google.rpc.QuotaFailure` quota that ran out (a
    # `...PerDay...` id is a daily quota). Google sends no Retry-After header and no rate-limit headers.
    retry_delay: str | None = "17s"
    quota_id: str = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    # An event stream prepared already content-encoded (a compression bomb): sent as it is, in HTTP chunks
    # of `stream_chunk` bytes, with `encoding` named in its Content-Encoding header (not applied again).
    encoded_stream: bytes | None = None
    stream_chunk: int = 16 * 1024
    # Body faults.
    encoding: Encoding | None = None
    malformed: bool = False
    error_after: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    # Transport.
    delay: float = 0.0
    event_delay: float = 0.002
    split: bool = False
    split_delay: float = 0.01
    truncate_after: int | None = None
    reset_after: int | None = None
    reset_before_response: bool = False
    stall_after: int | None = None
    stall_seconds: float = 0.0
    # With `resume`, the stall ends as soon as the test sets it (`stall_seconds` is then only a bound): a
    # test sees the client's side of a stall without guessing how long its own reading takes.
    resume: threading.Event | None = None
    close_connection: bool = False


@dataclass
class SentResponse:
    """What the fake answered: status, headers, and the body before content-encoding.

    For a stream, `body` holds the SSE records actually sent (so far); for a plain response, the whole
    body the fake meant to send, cut or not. `outcome` says how the response ended.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    streamed: bool
    outcome: str = "pending"  # complete | truncated | reset | client-gone
    # Set once the fake is done with the response (its last send returned, or it gave up): `outcome` is
    # final from then on. A client can read the last byte before the fake's thread gets there.
    ended: threading.Event = field(default_factory=threading.Event)

    def wait_ended(self, timeout: float = 10.0) -> bool:
        return self.ended.wait(timeout)

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


@dataclass
class RecordedRequest:
    """One request exactly as it reached the fake: header names in their original case, body bytes raw."""

    method: str
    target: str
    path: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    tls: bool
    sni: str | None
    received_at: float
    response: SentResponse | None = None

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name` in the request target, decoded; None when absent."""
        values = parse_qs(urlsplit(self.target).query, keep_blank_values=True).get(name)
        return values[0] if values else None

    def credential(self) -> str | None:
        """The key the request carries: `x-api-key`, an `Authorization: Bearer` token, Gemini's
        `x-goog-api-key`, else Gemini's `key=` query parameter."""
        if key := self.header("x-api-key"):
            return key
        auth = self.header("authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.header("x-goog-api-key") or self.query("key")


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


@dataclass
class _Sse:
    event: str | None
    data: str

    def encode(self) -> bytes:
        prefix = f"event: {self.event}\n" if self.event else ""
        return f"{prefix}data: {self.data}\n\n".encode()


@dataclass
class _CrlfSse(_Sse):
    """A Gemini `alt=sse` record: `data:` only, no event name, ended by CRLF CRLF."""

    def encode(self) -> bytes:
        return f"data: {self.data}\r\n\r\n".encode()


@dataclass
class _JsonArrayPiece(_Sse):
    """One element of a Gemini stream without `alt=sse`: a JSON array sent element by element."""

    prefix: str = ""
    suffix: str = ""

    def encode(self) -> bytes:
        return f"{self.prefix}{self.data}{self.suffix}".encode()


@dataclass
class _Plan:
    status: int
    headers: list[tuple[str, str]]
    units: list[bytes]  # plain responses: already content-encoded; streams: encoded as they are sent
    streamed: bool
    body: bytes = b""  # plain responses: the body before content-encoding


class _ClientGone(Exception):
    """The peer closed the connection while the fake was writing."""


def _random_id(prefix: str, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


# `POST /v1beta/models/{model}:generateContent` and its siblings (v1 and v1alpha take the same paths).
GEMINI_MODEL_PATH = re.compile(r"^/v1(?:beta|alpha)?/models/([^/:]+):([A-Za-z]+)$")
GEMINI_MODELS_PATH = re.compile(r"^/v1(?:beta|alpha)?/models$")
GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens")


def provider_for(path: str, host: str | None) -> Provider:
    """Which provider a request is for: by path for the known endpoints, else by Host."""
    if (host and host.lower().startswith("bedrock-runtime")) or fake_bedrock.operation(path) is not None:
        return "bedrock"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith(("/v1/chat/", "/v1/responses")):
        return "openai"
    if GEMINI_MODEL_PATH.match(path) or (host and "googleapis" in host.lower()):
        return "gemini"
    return "openai" if host and "openai" in host.lower() else "anthropic"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def oauth_usage_answer(now: datetime) -> dict[str, Any]:
    """A usage endpoint answer in its observed shape: utilization in PERCENT, resets as ISO 8601 with
    microseconds, a window the account lacks as null, extra usage off."""

    def window(utilization: float, hours: float) -> dict[str, Any]:
        return {"utilization": utilization, "resets_at": (now + timedelta(hours=hours)).isoformat()}

    return {
        "five_hour": window(61.0, 2.5),
        "seven_day": window(13.0, 80),
        "seven_day_oauth_apps": None,
        "seven_day_opus": None,
        "seven_day_sonnet": window(4.0, 80),
        "extra_usage": {
            "is_enabled": False,
            "monthly_limit": None,
            "used_credits": None,
            "utilization": None,
        },
    }


def anthropic_ratelimit_headers(served: int, now: datetime) -> list[tuple[str, str]]:
    """The rate-limit headers Anthropic sends on every response, `served` requests into the window.

    Reset times of the API family are RFC 3339; the subscription (`unified`) family uses epoch seconds.
    """
    now = now.replace(microsecond=0)
    headers = []
    for family, limit, per_request in (
        ("requests", 4000, 1),
        ("tokens", 2_000_000, 1000),
        ("input-tokens", 1_600_000, 800),
        ("output-tokens", 400_000, 200),
    ):
        headers += [
            (f"anthropic-ratelimit-{family}-limit", str(limit)),
            (f"anthropic-ratelimit-{family}-remaining", str(max(limit - served * per_request, 0))),
            (f"anthropic-ratelimit-{family}-reset", _rfc3339(now + timedelta(seconds=12))),
        ]
    reset_5h = int(now.timestamp()) + 3 * 3600
    reset_7d = int(now.timestamp()) + 4 * 86400
    headers += [
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-reset", str(reset_5h)),
        ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", f"{min(0.12 + served / 1000, 1):.3f}"),
        ("anthropic-ratelimit-unified-5h-reset", str(reset_5h)),
        ("anthropic-ratelimit-unified-7d-status", "allowed"),
        ("anthropic-ratelimit-unified-7d-utilization", f"{min(0.34 + served / 10000, 1):.4f}"),
        ("anthropic-ratelimit-unified-7d-reset", str(reset_7d)),
        ("anthropic-ratelimit-unified-fallback-percentage", "0.5"),
        ("anthropic-ratelimit-unified-overage-status", "rejected"),
        ("anthropic-ratelimit-unified-overage-disabled-reason", "org_level_disabled"),
    ]
    return headers


def openai_ratelimit_headers(served: int) -> list[tuple[str, str]]:
    """OpenAI's rate-limit headers: resets are Go-style durations (`6m0s`, `12ms`)."""
    return [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-requests", str(max(10000 - served, 0))),
        ("x-ratelimit-remaining-tokens", str(max(30_000_000 - served * 1000, 0))),
        ("x-ratelimit-reset-requests", "6m0s"),
        ("x-ratelimit-reset-tokens", "12ms"),
    ]


def error_body(provider: Provider, status: int, message: str | None = None, request_id: str = "") -> bytes:
    """The provider's error envelope for `status`."""
    if provider == "gemini":
        return _dumps(gemini_error(status, message)).encode()
    if provider == "anthropic":
        kind, default = _ANTHROPIC_ERRORS.get(status, ("api_error", "Internal server error."))
        envelope: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message or default}}
        if request_id:
            envelope["request_id"] = request_id
        return _dumps(envelope).encode()
    kind, code, default = _OPENAI_ERRORS.get(status, ("server_error", None, "Internal server error."))
    return _dumps(
        {"error": {"message": message or default, "type": kind, "param": None, "code": code}}
    ).encode()


def gemini_error(
    status: int, message: str | None = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Google's error envelope (`google.rpc.Status` as JSON): `{"error": {"code", "message", "status",
    "details"}}`; `details` is left out when there are none, as Google does."""
    name, default = _GEMINI_ERRORS.get(status, ("UNKNOWN", "Unknown error."))
    error: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if details:
        error["details"] = details
    return {"error": error}


def gemini_key_invalid() -> dict[str, Any]:
    """What the Gemini API answers a key it does not know: 400 INVALID_ARGUMENT (not 401, not 403) with an
    `ErrorInfo` whose reason is API_KEY_INVALID."""
    return gemini_error(
        400,
        GEMINI_BAD_KEY_MESSAGE,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": GEMINI_HOST},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": GEMINI_BAD_KEY_MESSAGE,
            },
        ],
    )


def gemini_quota_exhausted(model: str, quota_id: str, retry_delay: str | None) -> dict[str, Any]:
    """A 429 RESOURCE_EXHAUSTED as the Gemini API words it: the quota in a `QuotaFailure`, a `Help` link, and,
    when `retry_delay` is given, a `RetryInfo` whose `retryDelay` is a protobuf Duration ("17s"). The message
    repeats the wait with the nanoseconds the Duration rounds away."""
    free = quota_id.endswith("-FreeTier")
    tokens = "InputTokens" in quota_id
    if tokens:
        metric = f"generate_content_{'free' if free else 'paid'}_tier_input_token_count"
    else:
        metric = "generate_content_free_tier_requests" if free else "generate_requests_per_model"
    limit = "250000" if tokens else "10"
    message = (
        _GEMINI_ERRORS[429][1] + " To monitor your current usage, head to: https://ai.dev/rate-limit. \n"
        f"* Quota exceeded for metric: {GEMINI_HOST}/{metric}, limit: {limit}, model: {model}"
    )
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": f"{GEMINI_HOST}/{metric}",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": limit,
                }
            ],
        },
    ]
    if retry_delay is not None:
        seconds = retry_delay.removesuffix("s")
        message += f"\nPlease retry in {seconds if '.' in seconds else seconds + '.302873521'}s."
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    return gemini_error(429, message, details)


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _text_pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [""]


class _Encoder:
    """Content-encoding for one response; each streamed unit is flushed so it decodes on arrival."""

    def __init__(self, encoding: Encoding | None) -> None:
        self.encoding = encoding
        self._gzip = zlib.compressobj(wbits=31) if encoding == "gzip" else None
        self._br = brotli.Compressor() if encoding == "br" else None
        self._zstd = zstandard.ZstdCompressor().compressobj() if encoding == "zstd" else None

    @staticmethod
    def whole(encoding: Encoding | None, data: bytes) -> bytes:
        if encoding == "gzip":
            return gzip.compress(data)
        if encoding == "br":
            return brotli.compress(data)
        if encoding == "zstd":
            return zstandard.ZstdCompressor().compress(data)
        return data

    def feed(self, data: bytes) -> bytes:
        if self._gzip:
            return self._gzip.compress(data) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        if self._br:
            return self._br.process(data) + self._br.flush()
        if self._zstd:
            return self._zstd.compress(data) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return data

    def finish(self) -> bytes:
        if self._gzip:
            return self._gzip.flush()
        if self._br:
            return self._br.finish()
        if self._zstd:
            return self._zstd.flush()
        return b""


class _Responder:
    """Builds the status, headers and body units for one request. No I/O."""

    def __init__(self, request: RecordedRequest, behaviour: Behaviour, served: int) -> None:
        self.request = request
        self.b = behaviour
        self.served = served
        self.provider = provider_for(request.path, request.header("host"))
        if request.header("x-goog-api-key") is not None:  # `GET /v1/models` on a bare address is Gemini's too
            self.provider = "gemini"
        self.now = datetime.now(UTC)
        self.created = int(self.now.timestamp())
        self.request_id = (
            _random_id("req_011C", 22) if self.provider == "anthropic" else "req_" + secrets.token_hex(16)
        )
        if self.provider == "gemini":  # Gemini has no request id header; `responseId` is 23 base64url chars
            self.request_id = _random_id("", 23, string.ascii_letters + string.digits + "-_")
        elif self.provider == "bedrock":
            self.request_id = fake_bedrock.request_id()
        # Access key id -> (secret, session token): the SigV4 credentials Bedrock knows (FakeProvider's).
        self.aws_credentials: dict[str, tuple[str, str | None]] = {}

    def plan(self, accepted_credentials: set[str] | None) -> _Plan:
        b = self.b
        if b.encoded_stream is not None:
            return self._prepared_stream(b.encoded_stream)
        if self.provider == "bedrock" and b.body is None:
            return self._bedrock(accepted_credentials)
        if b.body is not None:
            return self._plain(b.status or 200, self._raw_body(b.body), "application/json")
        if b.status is not None and b.status >= 400:
            return self._error(b.status)
        if self.provider == "gemini":
            return self._gemini(accepted_credentials)
        if accepted_credentials is not None and self._credential() not in accepted_credentials:
            return self._error(401)
        if self.request.method == "GET" and self.request.path.split("?")[0] == "/v1/models":
            return self._json(self._models())
        payload = None
        if self.request.method == "POST" and self.request.path in self._endpoints():
            try:
                payload = json.loads(self.request.body or b"{}")
            except ValueError:
                return self._error(400, "Request body is not valid JSON.")
            if not isinstance(payload, dict):
                return self._error(400, "Request body must be a JSON object.")
        if payload is None:
            return self._error(404, self._not_found_message())
        return self._generate(payload)

    def token(self, status: int, answer: dict[str, Any]) -> _Plan:
        """An OAuth endpoint's JSON answer (token, usage): no API headers, never cached (RFC 6749 §5.1)."""
        body = _dumps(answer).encode()
        headers = [
            ("date", formatdate(usegmt=True)),
            ("server", "fake-provider"),
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
            ("pragma", "no-cache"),
            ("content-length", str(len(body))),
        ]
        return _Plan(status, headers, [body], streamed=False, body=body)

    # Plumbing.

    @staticmethod
    def _endpoints() -> set[str]:
        return {"/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions", "/v1/responses"}

    def _not_found_message(self) -> str:
        if self.provider == "openai":
            return f"Invalid URL ({self.request.method} {self.request.path})"
        return "Not found"

    def _credential(self) -> str | None:
        return self.request.credential()

    @staticmethod
    def _raw_body(body: bytes | str | dict[str, Any] | list[Any]) -> bytes:
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode()
        return _dumps(body).encode()

    def _common_headers(self) -> list[tuple[str, str]]:
        headers = [("date", formatdate(usegmt=True)), ("server", "fake-provider")]
        if self.provider == "anthropic":
            headers += [
                ("request-id", self.request_id),
                ("anthropic-organization-id", "00000000-0000-4000-8000-00000000f4ce"),
            ]
            if self.b.ratelimit_headers:
                headers += anthropic_ratelimit_headers(self.served, self.now)
        elif self.provider == "bedrock":
            headers.append(("x-amzn-requestid", self.request_id))
        elif self.provider == "gemini":
            # Google's front end: no request id and no rate-limit headers, whatever `ratelimit_headers` says.
            headers += [
                ("vary", "Origin"),
                ("vary", "X-Origin"),
                ("vary", "Referer"),
                ("x-xss-protection", "0"),
                ("x-frame-options", "SAMEORIGIN"),
                ("x-content-type-options", "nosniff"),
                ("server-timing", f"gfet4t7; dur={400 + self.served % 97}"),
                ("alt-svc", 'h3=":443"; ma=2592000,h3-29=":443"; ma=2592000'),
            ]
        else:
            headers += [
                ("x-request-id", self.request_id),
                ("openai-processing-ms", str(120 + self.served % 7)),
                ("openai-organization", "user-fake"),
                ("openai-version", "2020-10-01"),
            ]
            if self.b.ratelimit_headers:
                headers += openai_ratelimit_headers(self.served)
        return headers

    def _finish_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for name, value in self.b.headers:
            headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
            if value is not None:
                headers.append((name, value))
        return headers + list(self.b.added_headers)

    def _plain(
        self, status: int, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
    ) -> _Plan:
        if self.b.malformed:
            body = body[: max(len(body) // 2, 1)]
        encoded = _Encoder.whole(self.b.encoding, body)
        headers = [*self._common_headers(), *extra, ("content-type", content_type)]
        if self.b.encoding:
            headers.append(("content-encoding", self.b.encoding))
        headers.append(("content-length", str(len(encoded))))
        if self.b.close_connection:
            headers.append(("connection", "close"))
        units = [encoded[: len(encoded) // 2], encoded[len(encoded) // 2 :]] if self.b.split else [encoded]
        return _Plan(status, self._finish_headers(headers), units, streamed=False, body=body)

    def _stream(
        self,
        records: Sequence[_Sse | fake_bedrock.Frame],
        content_type: str = "text/event-stream; charset=utf-8",
    ) -> _Plan:
        if self.b.malformed and records:
            broken = records[min(2, len(records) - 1)]
            broken.data = broken.data[: max(len(broken.data) // 2, 1)]
        headers = [
            *self._common_headers(),
            ("content-type", content_type),
            ("cache-control", "no-cache"),
        ]
        if self.b.encoding:
            headers.append(("content-encoding", self.b.encoding))
        headers.append(("transfer-encoding", "chunked"))
        if self.b.close_connection:
            headers.append(("connection", "close"))
        return _Plan(200, self._finish_headers(headers), [r.encode() for r in records], streamed=True)

    def _prepared_stream(self, wire: bytes) -> _Plan:
        """`encoded_stream` as it is: its HTTP chunks framed here, so nothing encodes it again."""
        headers = [
            *self._common_headers(),
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
        ]
        if self.b.encoding:
            headers.append(("content-encoding", self.b.encoding))
        headers.append(("transfer-encoding", "chunked"))
        step = max(1, self.b.stream_chunk)
        units = [_chunk(wire[i : i + step]) for i in range(0, len(wire), step)] + [b"0\r\n\r\n"]
        return _Plan(200, self._finish_headers(headers), units, streamed=False, body=wire)

    def _error(self, status: int, message: str | None = None) -> _Plan:
        if self.provider == "gemini":
            return self._gemini_error(status, message)
        extra: list[tuple[str, str]] = []
        if status in (429, 529, 503):
            extra.append(("retry-after", "1"))
            if self.provider == "anthropic":
                extra.append(("x-should-retry", "true"))
        body = error_body(self.provider, status, message or self.b.error_message, self.request_id)
        return self._plain(status, body, "application/json", extra)

    def _usage_extra(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**usage, **self.b.usage_extra}

    # Endpoints.

    def _generate(self, payload: dict[str, Any]) -> _Plan:
        model = self.b.model or str(payload.get("model", "unknown-model"))
        stream = payload.get("stream") is True
        path = self.request.path
        if path == "/v1/messages/count_tokens":
            return self._json({"input_tokens": self.b.usage.input_tokens})
        if path == "/v1/messages":
            return self._stream(self._anthropic_events(model)) if stream else self._json(self._message(model))
        if path == "/v1/chat/completions":
            if stream:
                options = payload.get("stream_options") or {}
                return self._stream(
                    self._chat_events(model, include_usage=options.get("include_usage") is True)
                )
            return self._json(self._chat(model))
        return self._stream(self._responses_events(model)) if stream else self._json(self._response(model))

    def _models(self) -> dict[str, Any]:
        """`GET /v1/models`, free on both APIs: what a credential check (`sluice doctor --online`) asks."""
        if self.provider == "openai":
            return {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "owned_by": "openai"}]}
        model = {"id": "claude-sonnet-4-5", "type": "model", "display_name": "Claude Sonnet 4.5"}
        return {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]}

    def _json(self, body: dict[str, Any]) -> _Plan:
        return self._plain(self.b.status or 200, _dumps(body).encode(), "application/json")

    def _apply_stream_error(self, records: list[_Sse], error: _Sse) -> list[_Sse]:
        if self.b.error_after is None:
            return records
        return [*records[: self.b.error_after], error]

    # Anthropic Messages: https://docs.anthropic.com/en/api/messages-streaming

    def _anthropic_content(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.b.thinking is not None:
            blocks.append({"type": "thinking", "thinking": self.b.thinking, "signature": "c2lnbmF0dXJl"})
        blocks.append({"type": "text", "text": self.b.text})
        return blocks

    def _message(self, model: str) -> dict[str, Any]:
        return {
            "id": _random_id("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._anthropic_content(),
            "stop_reason": self.b.stop_reason or "end_turn",
            "stop_sequence": None,
            "usage": self._usage_extra(self.b.usage.anthropic()),
        }

    def _anthropic_events(self, model: str) -> list[_Sse]:
        def record(kind: str, **fields: Any) -> _Sse:
            return _Sse(kind, _dumps({"type": kind, **fields}))

        message = self._message(model)
        usage = self.b.usage
        start = {**message, "content": [], "stop_reason": None}
        # message_start carries a placeholder output count; the real one comes with message_delta.
        start["usage"] = self._usage_extra(usage.anthropic(output_tokens=1))
        records = [record("message_start", message=start), record("ping")]
        for index, block in enumerate(message["content"]):
            kind = block["type"]
            empty = {"type": kind, kind: "", **({"signature": ""} if kind == "thinking" else {})}
            records.append(record("content_block_start", index=index, content_block=empty))
            records += [
                record("content_block_delta", index=index, delta={"type": f"{kind}_delta", kind: piece})
                for piece in _text_pieces(block[kind])
            ]
            if kind == "thinking":
                signature = {"type": "signature_delta", "signature": block["signature"]}
                records.append(record("content_block_delta", index=index, delta=signature))
            records.append(record("content_block_stop", index=index))
        deltas = max(self.b.message_deltas, 1)
        for n in range(1, deltas + 1):
            # message_delta usage is cumulative: each one restates the totals so far.
            stop = {"stop_reason": message["stop_reason"] if n == deltas else None, "stop_sequence": None}
            cumulative = usage.anthropic(output_tokens=usage.output_tokens * n // deltas)
            records.append(record("message_delta", delta=stop, usage=self._usage_extra(cumulative)))
        records.append(record("message_stop"))
        error = {
            "type": self.b.error_type or "overloaded_error",
            "message": self.b.error_message or "Overloaded",
        }
        return self._apply_stream_error(records, record("error", error=error))

    # OpenAI Chat Completions: https://platform.openai.com/docs/api-reference/chat-streaming

    def _chat(self, model: str) -> dict[str, Any]:
        return {
            "id": _random_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": self.created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.b.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": self.b.stop_reason or "stop",
                }
            ],
            "usage": self._usage_extra(self.b.usage.openai_chat()),
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }

    def _chat_events(self, model: str, *, include_usage: bool) -> list[_Sse]:
        chat_id = _random_id("chatcmpl-", 29)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> _Sse:
            body = {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake0001",
                "choices": choices,
            }
            if include_usage:
                body["usage"] = None
            return _Sse(None, _dumps({**body, **extra}))

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        records = [chunk(choice({"role": "assistant", "content": "", "refusal": None}))]
        records += [chunk(choice({"content": piece})) for piece in _text_pieces(self.b.text)]
        records.append(chunk(choice({}, self.b.stop_reason or "stop")))
        if include_usage:
            records.append(chunk([], usage=self._usage_extra(self.b.usage.openai_chat())))
        records.append(_Sse(None, "[DONE]"))
        error = _Sse(
            None,
            _dumps(
                {
                    "error": {
                        "message": self.b.error_message or "The server had an error.",
                        "type": self.b.error_type or "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            ),
        )
        return self._apply_stream_error(records, error)

    # OpenAI Responses: https://platform.openai.com/docs/api-reference/responses-streaming

    def _response(
        self, model: str, *, resp_id: str | None = None, item_id: str | None = None
    ) -> dict[str, Any]:
        status = self.b.responses_status
        item = {
            "id": item_id or "msg_" + secrets.token_hex(24),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": self.b.text, "annotations": [], "logprobs": []}],
        }
        return {
            "id": resp_id or "resp_" + secrets.token_hex(24),
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": {"code": "server_error", "message": "The model failed."} if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": None,
            "max_output_tokens": None,
            "model": model,
            "output": [item],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": self._usage_extra(self.b.usage.openai_responses()),
            "user": None,
            "metadata": {},
        }

    def _responses_events(self, model: str) -> list[_Sse]:
        resp_id = "resp_" + secrets.token_hex(24)
        item_id = "msg_" + secrets.token_hex(24)
        final = self._response(model, resp_id=resp_id, item_id=item_id)
        pending = {
            **final,
            "status": "in_progress",
            "output": [],
            "usage": None,
            "error": None,
            "incomplete_details": None,
        }
        item = final["output"][0]
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        bodies: list[dict[str, Any]] = [
            {"type": "response.created", "response": pending},
            {"type": "response.in_progress", "response": pending},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **where, "part": part},
        ]
        bodies += [
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            for piece in _text_pieces(self.b.text)
        ]
        bodies += [
            {"type": "response.output_text.done", **where, "text": self.b.text, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": {**part, "text": self.b.text}},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": f"response.{self.b.responses_status}", "response": final},
        ]
        records = [
            _Sse(body["type"], _dumps({**body, "sequence_number": n})) for n, body in enumerate(bodies)
        ]
        error = {
            "type": "error",
            "sequence_number": self.b.error_after,
            "code": self.b.error_type or "server_error",
            "message": self.b.error_message or "The server had an error.",
            "param": None,
        }
        return self._apply_stream_error(records, _Sse("error", _dumps(error)))

    # Google Gemini: https://ai.google.dev/api/generate-content (facts and sources in tests/fixtures/gemini/)

    def _gemini(self, accepted_credentials: set[str] | None) -> _Plan:
        """The Gemini API's answer to an unscripted request: a refused key, the models list, or a model
        method (`generateContent`, `streamGenerateContent`, `countTokens`)."""
        request = self.request
        if accepted_credentials is not None and (key := request.credential()) not in accepted_credentials:
            if key is None:
                return self._gemini_error(403, GEMINI_NO_KEY_MESSAGE)
            return self._gemini_json(gemini_key_invalid(), status=400)
        if request.method == "GET" and GEMINI_MODELS_PATH.match(request.path):
            return self._gemini_json(self._gemini_models())
        found = GEMINI_MODEL_PATH.match(request.path)
        if request.method != "POST" or found is None or found.group(2) not in GEMINI_METHODS:
            return self._gemini_error(404)
        model, method = found.group(1), found.group(2)
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            return self._gemini_error(400, "Invalid JSON payload received. Unexpected token.")
        if not isinstance(payload, dict):
            return self._gemini_error(400, "Invalid JSON payload received. Expected an object.")
        if method == "countTokens":
            return self._gemini_json(self._gemini_count())
        contents = payload.get("contents")
        if not isinstance(contents, list) or not contents:
            return self._gemini_error(400, "* GenerateContentRequest.contents: contents is not specified\n")
        model = self.b.model or model
        if method == "generateContent":
            return self._gemini_json(self._gemini_response(model))
        chunks = [_dumps(chunk) for chunk in self._gemini_chunks(model)]
        if request.query("alt") == "sse":
            error = _CrlfSse(None, _dumps(self._gemini_stream_error()))
            return self._stream(self._apply_stream_error([_CrlfSse(None, c) for c in chunks], error))
        # Without alt=sse the stream is one JSON array, sent an element at a time.
        pieces: list[_Sse] = [
            _JsonArrayPiece(None, c, prefix="[" if n == 0 else ",\r\n") for n, c in enumerate(chunks)
        ]
        pieces.append(_JsonArrayPiece(None, "", suffix="]"))
        return self._stream(pieces, "application/json; charset=UTF-8")

    # Amazon Bedrock Runtime (tests/fake_bedrock.py)

    def _bedrock(self, accepted_credentials: set[str] | None) -> _Plan:
        """Bedrock's answer: a refused credential, a scripted error, or one of its four operations."""
        request, b = self.request, self.b
        refusal = fake_bedrock.authenticate(request, accepted_credentials, self.aws_credentials)
        if refusal is not None:
            return self._bedrock_error(refusal.status, refusal.kind, refusal.message)
        if b.status is not None and b.status >= 400:
            kind, message = fake_bedrock.ERRORS.get(b.status, fake_bedrock.ERRORS[500])
            return self._bedrock_error(b.status, b.error_type or kind, b.error_message or message)
        found = fake_bedrock.operation(request.path)
        if request.method != "POST" or found is None:
            return self._bedrock_error(404, "UnknownOperationException", "")
        model, operation = found
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            return self._bedrock_error(400, *fake_bedrock.ERRORS[400])
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return self._bedrock_error(400, *fake_bedrock.ERRORS[400])
        model = b.model or model
        if operation.startswith("invoke"):
            if "model" in payload or "anthropic_version" not in payload:
                message = (
                    "Malformed input request: #: extraneous key [model] is not permitted, please reformat "
                    "your input and try again."
                )
                return self._bedrock_error(400, "ValidationException", message)
            if operation == "invoke":
                return self._json(self._message(model))
            self.b = replace(b, error_after=None)
            events = self._anthropic_events(model)
            self.b = b
            frames = fake_bedrock.invoke_frames({}, [(e.event or "", e.data) for e in events], b.usage)
        elif operation == "converse":
            stop = b.stop_reason or "end_turn"
            return self._json(fake_bedrock.converse_answer(b.text, stop, b.usage))
        else:
            frames = fake_bedrock.converse_frames(_text_pieces(b.text), b.stop_reason or "end_turn", b.usage)
        if b.error_after is not None:
            frames = [*frames[: b.error_after], fake_bedrock.stream_exception(b)]
        plan = self._stream(list(frames), fake_bedrock.STREAM_TYPE)
        plan.headers.append(("x-amzn-bedrock-content-type", "application/json"))
        return plan

    def _bedrock_error(self, status: int, kind: str, message: str) -> _Plan:
        extra = fake_bedrock.error_headers(kind, self.request_id)
        return self._plain(status, fake_bedrock.error_body(kind, message), "application/json", extra)

    def _gemini_json(self, body: dict[str, Any], status: int | None = None) -> _Plan:
        encoded = _dumps(body).encode()
        return self._plain(status or self.b.status or 200, encoded, "application/json; charset=UTF-8")

    def _gemini_error(self, status: int, message: str | None = None) -> _Plan:
        """Google's envelope; a 429 names its quota and, unless told otherwise, a RetryInfo delay."""
        found = GEMINI_MODEL_PATH.match(self.request.path)
        model = self.b.model or (found.group(1) if found else "gemini-2.5-flash")
        if status == 429 and message is None and self.b.error_message is None:
            body = gemini_quota_exhausted(model, self.b.quota_id, self.b.retry_delay)
        else:
            body = gemini_error(status, message or self.b.error_message)
        return self._gemini_json(body, status=status)

    def _gemini_stream_error(self) -> dict[str, Any]:
        """What ends a Gemini stream that fails part way: one more `data:` record, the error envelope."""
        name = self.b.error_type or "UNAVAILABLE"
        status = next((code for code, (known, _) in _GEMINI_ERRORS.items() if known == name), 503)
        message = self.b.error_message or _GEMINI_ERRORS.get(status, _GEMINI_ERRORS[503])[1]
        return {"error": {"code": status, "message": message, "status": name}}

    def _gemini_parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if self.b.thinking is not None:  # a thought summary, as `thinkingConfig.includeThoughts` asks for
            parts.append({"text": self.b.thinking, "thought": True})
        parts.append({"text": self.b.text})
        return parts

    def _gemini_response(self, model: str) -> dict[str, Any]:
        candidate = {
            "content": {"parts": self._gemini_parts(), "role": "model"},
            "finishReason": self.b.stop_reason or "STOP",
            "index": 0,
        }
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage_extra(self.b.usage.gemini()),
            "modelVersion": model,
            "responseId": self.request_id,
        }

    def _gemini_chunks(self, model: str) -> list[dict[str, Any]]:
        """A streamed answer: every chunk a whole GenerateContentResponse with the same `responseId`, each
        carrying `usageMetadata` whose counts are cumulative (the last chunk's are the call's); thought
        summaries first, then the text, `finishReason` on the last chunk only."""
        usage = self.b.usage

        def chunk(part: dict[str, Any], metadata: dict[str, Any], finish: bool = False) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
            if finish:
                candidate["finishReason"] = self.b.stop_reason or "STOP"
            return {
                "candidates": [candidate],
                "usageMetadata": self._usage_extra(metadata),
                "modelVersion": model,
                "responseId": self.request_id,
            }

        chunks = []
        if self.b.thinking is not None:
            before = usage.gemini(with_output=False)
            chunks += [chunk({"text": p, "thought": True}, before) for p in _text_pieces(self.b.thinking)]
        pieces = _text_pieces(self.b.text)
        answer = usage.output_tokens - usage.reasoning_tokens
        for n, piece in enumerate(pieces, 1):
            so_far = usage.gemini(output_tokens=usage.reasoning_tokens + answer * n // len(pieces))
            chunks.append(chunk({"text": piece}, so_far, finish=n == len(pieces)))
        return chunks

    def _gemini_count(self) -> dict[str, Any]:
        prompt = self.b.usage.input_tokens + self.b.usage.cache_read_tokens
        return {"totalTokens": prompt, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}

    @staticmethod
    def _gemini_models() -> dict[str, Any]:
        model = {
            "name": "models/gemini-2.5-flash",
            "version": "001",
            "displayName": "Gemini 2.5 Flash",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"],
            "thinking": True,
        }
        return {"models": [model]}


class _Reader:
    """Buffered reads straight from the socket.

    Not `socket.makefile()`: a file object keeps the socket's descriptor open after `close()`, which would
    turn the fake's TCP reset into an orderly FIN.
    """

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = bytearray()

    def _fill(self) -> bool:
        data = self._conn.recv(65536)
        self._buffer += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0 and len(self._buffer) < limit:
            if not self._fill():
                break
        size = min(end + 1 if end >= 0 else len(self._buffer), limit)
        line = bytes(self._buffer[:size])
        del self._buffer[:size]
        return line

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _read_request(rfile: _Reader, tls: bool, sni: str | None) -> RecordedRequest | None:
    line = rfile.readline(MAX_HEADER_BYTES)
    while line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: ignore empty lines before a request line
        line = rfile.readline(MAX_HEADER_BYTES)
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = rfile.readline(MAX_HEADER_BYTES)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
        headers.append((name, value.strip()))
    body = _read_body(rfile, headers)
    return RecordedRequest(
        method=method,
        target=target,
        path=urlsplit(target).path or "/",
        http_version=version,
        headers=headers,
        body=body,
        tls=tls,
        sni=sni,
        received_at=time.time(),
    )


def _read_body(rfile: _Reader, headers: list[tuple[str, str]]) -> bytes:
    if "chunked" in (_first(headers, "transfer-encoding") or "").lower():
        body = bytearray()
        while True:
            size = int(rfile.readline(MAX_HEADER_BYTES).split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline(MAX_HEADER_BYTES) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            body += rfile.read(size)
            rfile.readline(MAX_HEADER_BYTES)
    length = int(_first(headers, "content-length") or 0)
    return rfile.read(length) if length else b""


class FakeProvider:
    """The fake API server. `start()` binds (port 0 picks a free one) and serves from background threads.

    TLS when `certfile`/`keyfile` are given (ALPN offers only http/1.1), plain HTTP otherwise.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
        ca_pem: str | Path | None = None,
        record_requests: bool = True,
    ) -> None:
        self.host = host
        self.record_requests = record_requests
        self._port = port
        self.ca_pem = Path(ca_pem) if ca_pem else None
        self._ssl: ssl.SSLContext | None = None
        if certfile:
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
            self._ssl.set_alpn_protocols(["http/1.1"])
            self._ssl.sni_callback = self._on_sni
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._sni: dict[int, str] = {}
        self._queue: list[Behaviour] = []
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._served = 0
        self._accepted = 0
        self.default = Behaviour()
        self.accepted_credentials: set[str] | None = None
        # Bedrock's SigV4 credentials: access key id -> (secret access key, session token or None).
        self.aws_credentials: dict[str, tuple[str, str | None]] = {}
        # The OAuth token endpoint: refresh token -> the token response it is exchanged for, once
        # (refresh tokens rotate and are single-use). Any other refresh token gets `invalid_grant`.
        self.oauth_grants: dict[str, dict[str, Any]] = {}
        # Seconds the token endpoint takes to answer: a wide window for concurrent callers to pile up in.
        self.oauth_delay = 0.0
        # The usage endpoint: what it answers (None: `oauth_usage_answer(now)`), and the access tokens it
        # accepts (those the token endpoint issued, and those declared with `know_token`).
        self.oauth_usage: dict[str, Any] | None = None
        self.oauth_tokens: set[str] = set()
        # Picks the behaviour from the request itself (its body, its headers), before the queue is looked
        # at; returning None falls back to the queue and the default. For concurrent tests, where which
        # request takes which queued behaviour would be a race.
        self.choose: Callable[[RecordedRequest], Behaviour | None] | None = None
        # What a provider keeps per key (tests/fake_accounts.py), both off unless set: a prompt cache per
        # key that decides each Messages call's cache reads and writes, and per-key rate limits (headers
        # that show each key's load, and scheduled 429s). A scripted status, body or stream wins over both.
        self.prompt_cache: PromptCache | None = None
        self.key_limits: KeyLimits | None = None
        # Google's token endpoint (`fake_vertex.TOKEN_PATH`) and Vertex AI (tests/fake_vertex.py).
        self.google = fake_vertex.FakeGoogle()

    # Lifecycle.

    def start(self) -> FakeProvider:
        listener = socket.create_server((self.host, self._port))
        listener.settimeout(0.1)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="fake-provider-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._accept_thread:
            self._accept_thread.join(5)
        if self._listener:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            _shutdown(conn)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def hosts_env(self, hosts: Iterable[str] = TEST_HOSTS) -> str:
        """The SLUICE_TEST_HOSTS value that sends `hosts` to this fake."""
        return ",".join(f"{name}={self.host}:{self.port}" for name in hosts)

    # Scripting.

    def next(self, behaviour: Behaviour | None = None, /, *, times: int = 1, **fields: Any) -> Behaviour:
        """Queue what the next matching request gets (`times` requests in a row); returns the behaviour.

        `fake.next(status=429)`, `fake.next(path="/v1/messages", truncate_after=4)`, or a `Behaviour`.
        """
        if behaviour is None:
            behaviour = Behaviour(**fields)
        elif fields:
            raise TypeError("pass either a Behaviour or its fields, not both")
        with self._lock:
            self._queue.extend([behaviour] * times)
        return behaviour

    def set_default(self, **fields: Any) -> Behaviour:
        """What every request gets when nothing queued matches (until `reset()`)."""
        self.default = Behaviour(**fields)
        return self.default

    def pending(self) -> int:
        """How many queued behaviours no request has consumed yet."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget requests, queue, default, credentials, errors and the rate-limit counter."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._errors.clear()
            self._served = 0
            self._accepted = 0
        self.default = Behaviour()
        self.accepted_credentials = None
        with self._lock:
            self.oauth_grants = {}
            self.oauth_tokens = set()
        self.oauth_delay = 0.0
        self.oauth_usage = None
        self.choose = None
        self.prompt_cache = None
        self.key_limits = None

    def clear(self) -> None:
        """Forget the recorded requests only."""
        with self._lock:
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted since the last reset.

        With `connection_strategy=eager` mitmproxy connects upstream at CONNECT, before any request, so
        "the upstream was never contacted" is `fake.requests == []`, not `fake.connections == 0`.
        """
        with self._lock:
            return self._accepted

    @property
    def errors(self) -> list[str]:
        """Tracebacks of bugs in the fake itself (a client hanging up is not one)."""
        with self._lock:
            return list(self._errors)

    @property
    def token_requests(self) -> list[RecordedRequest]:
        """The requests made to the OAuth token endpoint (also in `requests`)."""
        return [r for r in self.requests if r.path == OAUTH_TOKEN_PATH]

    def grant(
        self, refresh_token: str, access_token: str, new_refresh_token: str | None, expires_in: int = 3600
    ) -> None:
        """Let the token endpoint exchange `refresh_token`, once, for these tokens."""
        answer: dict[str, Any] = {"token_type": "Bearer", "access_token": access_token}
        answer["expires_in"] = expires_in
        if new_refresh_token is not None:
            answer["refresh_token"] = new_refresh_token
        with self._lock:
            self.oauth_grants[refresh_token] = answer

    def know_token(self, access_token: str) -> None:
        """Let the usage endpoint accept `access_token` (one issued before this fake started, say)."""
        with self._lock:
            self.oauth_tokens.add(access_token)

    @property
    def usage_requests(self) -> list[RecordedRequest]:
        """The requests made to the OAuth usage endpoint (also in `requests`)."""
        return [r for r in self.requests if r.path == OAUTH_USAGE_PATH]

    def _usage(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        """The usage endpoint's answer: the usage for a known bearer token with the OAuth beta flag."""
        if request.method != "GET":
            return 405, _anthropic_error("invalid_request_error", "Method not allowed")
        if provider_for(request.path, request.header("host") or request.sni) != "anthropic":
            return 404, _anthropic_error("not_found_error", "Not found")
        betas = [beta.strip() for beta in (request.header("anthropic-beta") or "").split(",")]
        if OAUTH_BETA not in betas:
            return 401, _anthropic_error(
                "authentication_error", "OAuth authentication is currently not supported."
            )
        auth = request.header("authorization") or ""
        with self._lock:
            known = auth.lower().startswith("bearer ") and auth[7:] in self.oauth_tokens
        if not known:
            return 401, _anthropic_error("authentication_error", "Invalid bearer token")
        return 200, self.oauth_usage if self.oauth_usage is not None else oauth_usage_answer(
            datetime.now(UTC)
        )

    def _redeem(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer to a refresh request (RFC 6749 §5.1 and §5.2)."""
        content_type = (request.header("content-type") or "").lower()
        try:
            if "json" in content_type:
                fields = json.loads(request.body or b"{}")
            else:
                fields = {k: v[-1] for k, v in parse_qs(request.body.decode("ascii")).items()}
        except (ValueError, UnicodeDecodeError):
            fields = None
        if not isinstance(fields, dict) or fields.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type", "error_description": "Expected refresh_token."}
        if self.oauth_delay:
            self._stopping.wait(self.oauth_delay)
        with self._lock:
            answer = self.oauth_grants.pop(str(fields.get("refresh_token")), None)
        if answer is None:
            return 400, {"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}
        self.know_token(answer["access_token"])
        return 200, answer

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.requests) >= n:
                return found
            time.sleep(0.01)
        raise AssertionError(f"fake provider saw {len(self.requests)} requests, expected {n}")

    # Serving.

    def _take(self, path: str, chosen: Behaviour | None = None) -> tuple[Behaviour, int]:
        """The behaviour for a request to `path`, and how many requests were served including it."""
        with self._lock:
            self._served += 1
            if chosen is not None:
                return chosen, self._served
            for index, candidate in enumerate(self._queue):
                # A behaviour for "any path" is meant for the API, not for the OAuth endpoints.
                if candidate.path == path or (candidate.path is None and path not in _OWN_PATHS):
                    return self._queue.pop(index), self._served
            return self.default, self._served

    def _on_sni(self, sock: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        if server_name:
            with self._lock:
                self._sni[id(sock)] = server_name

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(
                target=self._handle, args=(conn,), name="fake-provider-conn", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
                self._accepted += 1
            thread.start()

    def _handle(self, raw: socket.socket) -> None:
        conn: socket.socket = raw
        ending: _Ending = "cut"
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(60)
            sni = None
            if self._ssl:
                tls_conn = self._ssl.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                conn = tls_conn
                with self._lock:
                    self._connections.add(conn)
                tls_conn.do_handshake()
                with self._lock:
                    sni = self._sni.pop(id(tls_conn), None)
            else:
                with self._lock:
                    self._connections.add(conn)
            rfile = _Reader(conn)
            ending = "keep-alive"
            while ending == "keep-alive" and not self._stopping.is_set():
                request = _read_request(rfile, self.tls, sni)
                ending = "close" if request is None else self._respond(conn, request)
        except (OSError, ValueError, _ClientGone):
            ending = "cut"  # the peer went away or spoke garbage: not the fake's bug
        except Exception:
            ending = "cut"
            with self._lock:
                self._errors.append(traceback.format_exc())
        finally:
            if ending == "close":
                _close_orderly(conn)
            else:
                _shutdown(conn)
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())

    def _respond(self, conn: socket.socket, request: RecordedRequest) -> _Ending:
        """Answer one request; say whether the connection carries on, ends cleanly, or was cut."""
        try:
            return self._answer(conn, request)
        finally:
            if request.response is not None:
                request.response.ended.set()

    def _answer(self, conn: socket.socket, request: RecordedRequest) -> _Ending:
        if self.record_requests:
            with self._lock:
                self._requests.append(request)
        behaviour, served = self._take(request.path, self.choose(request) if self.choose else None)
        behaviour = self._per_key(request, behaviour)
        responder = _Responder(request, behaviour, served)
        responder.aws_credentials = self.aws_credentials
        # The token endpoint answers grants unless a behaviour was queued for its path explicitly.
        if request.path == OAUTH_TOKEN_PATH and behaviour.path != OAUTH_TOKEN_PATH:
            plan = responder.token(*self._redeem(request))
        elif request.path == OAUTH_USAGE_PATH and behaviour.path != OAUTH_USAGE_PATH:
            plan = responder.token(*self._usage(request))
        elif request.path == fake_vertex.TOKEN_PATH and behaviour.path != fake_vertex.TOKEN_PATH:
            plan = responder.token(*self.google.grant(request))
        elif fake_vertex.vertex_path(request.path) is not None:
            plan = self._vertex(request, behaviour, served)
        else:
            plan = responder.plan(self.accepted_credentials)
        sent = SentResponse(plan.status, plan.headers, plan.body, plan.streamed)
        request.response = sent
        if behaviour.delay and self._stopping.wait(behaviour.delay):
            return "cut"
        if behaviour.reset_before_response:
            sent.outcome = "reset"
            _reset(conn)
            return "cut"
        head = f"HTTP/1.1 {plan.status} {_reason(plan.status)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in plan.headers) + "\r\n"
        try:
            _send(conn, head.encode("latin-1"))
            finished = self._send_units(conn, plan, behaviour, sent)
        except _ClientGone:
            sent.outcome = "client-gone"
            return "cut"
        if not finished:
            return "cut"
        sent.outcome = "complete"
        client_close = (request.header("connection") or "").lower() == "close"
        return "close" if behaviour.close_connection or client_close else "keep-alive"

    @property
    def token_uri(self) -> str:
        """Where the service-account key file sends google-auth for a token: this fake, on loopback."""
        return f"{self.base_url}{fake_vertex.TOKEN_PATH}"

    def _vertex(self, request: RecordedRequest, behaviour: Behaviour, served: int) -> _Plan:
        """Vertex AI: an access token the token endpoint issued, then Anthropic's answer; errors in Google's
        envelope."""
        google = _Responder(request, behaviour, served)
        google.provider = "gemini"  # Google's front end and error envelope
        if not self.google.accepts(request.header("authorization")):
            return google._error(401, fake_vertex.UNAUTHENTICATED_MESSAGE)
        if behaviour.status is not None and behaviour.status >= 400:
            quota = fake_vertex.QUOTA_MESSAGE if behaviour.status == 429 else None
            return google._error(behaviour.status, behaviour.error_message or quota)
        anthropic = fake_vertex.as_anthropic(request)
        if anthropic is None:
            return google._error(400, "Invalid JSON payload received.")
        responder = _Responder(anthropic, behaviour, served)
        responder.provider = "anthropic"
        return responder.plan(None)

    def _per_key(self, request: RecordedRequest, behaviour: Behaviour) -> Behaviour:
        """`behaviour` with the per-key models applied to a Messages call: a scheduled 429, the usage the
        key's prompt cache gives, the key's rate-limit headers. Scripted answers are left as they are."""
        limits, cache = self.key_limits, self.prompt_cache
        if limits is None and cache is None:
            return behaviour
        scripted = behaviour.status or behaviour.body is not None or behaviour.encoded_stream is not None
        if scripted or request.method != "POST" or request.path != "/v1/messages":
            return behaviour
        key = request.credential()
        if key is None or (self.accepted_credentials is not None and key not in self.accepted_credentials):
            return behaviour  # answered 401 by the responder: no key's state changes
        if limits is not None and (wait := limits.admit(key)) is not None:
            refused = [*limits.headers(key), ("retry-after", str(max(1, math.ceil(wait))))]
            return replace(behaviour, status=429, headers=[*refused, *behaviour.headers])
        usage = behaviour.usage
        if cache is not None:
            try:
                payload = json.loads(request.body)
            except ValueError:
                return behaviour  # the responder answers 400
            if isinstance(payload, dict):
                usage = cache.usage(key, payload, behaviour.usage.output_tokens)
        if limits is None:
            return replace(behaviour, usage=usage)
        limits.record(key, usage)
        return replace(behaviour, usage=usage, headers=[*limits.headers(key), *behaviour.headers])

    def _stall(self, b: Behaviour) -> bool:
        """Wait out a stall; True when the fake is stopping instead."""
        if b.resume is None:
            return self._stopping.wait(b.stall_seconds)
        b.resume.wait(b.stall_seconds or 60.0)
        return self._stopping.is_set()

    def _send_units(self, conn: socket.socket, plan: _Plan, b: Behaviour, sent: SentResponse) -> bool:
        encoder = _Encoder(b.encoding) if plan.streamed else None
        for index in range(len(plan.units) + 1):
            if b.stall_after == index and self._stall(b):
                return False
            if b.truncate_after == index:
                sent.outcome = "truncated"
                _shutdown(conn)
                return False
            if b.reset_after == index:
                sent.outcome = "reset"
                _reset(conn)
                return False
            if index == len(plan.units):
                break
            unit = plan.units[index]
            if encoder is None:
                _send(conn, unit)
                if b.split and index == 0:
                    time.sleep(b.split_delay)
                continue
            sent.body += unit
            payload = encoder.feed(unit)
            if b.split and len(payload) > 1:
                # Two HTTP chunks, two TCP writes: the record arrives in two pieces.
                half = len(payload) // 2
                _send(conn, _chunk(payload[:half]))
                time.sleep(b.split_delay)
                _send(conn, _chunk(payload[half:]))
            elif payload:
                _send(conn, _chunk(payload))
            if b.event_delay:
                time.sleep(b.event_delay)
        if encoder is not None:
            if tail := encoder.finish():
                _send(conn, _chunk(tail))
            _send(conn, b"0\r\n\r\n")
        return True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError as e:
        raise _ClientGone(str(e)) from e


def _shutdown(conn: socket.socket) -> None:
    """Close without a TLS close_notify: to the peer this is a connection cut, not a clean end."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _close_orderly(conn: socket.socket) -> None:
    """End a connection the way a healthy server does: TLS close_notify first (RFC 8446 §6.1), then FIN."""
    if isinstance(conn, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            conn.settimeout(0.5)
            conn.unwrap()
    _shutdown(conn)


def _reset(conn: socket.socket) -> None:
    """Abort with a TCP RST: SO_LINGER on with a zero timeout makes close() discard and reset."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help="plain HTTP instead of TLS")
    parser.add_argument("--certdir", type=Path, help="where to write the test CA (default: a temp dir)")
    parser.add_argument("--event-delay", type=float, default=0.0, help="seconds between SSE records")
    parser.add_argument("--split", action="store_true", help="split every SSE record across two writes")
    args = parser.parse_args(argv)

    kwargs: dict[str, Any] = {}
    if not args.plain:
        import tempfile

        from tests.e2e.harness import make_test_ca

        certdir = args.certdir or Path(tempfile.mkdtemp(prefix="fake-provider-"))
        ca = make_test_ca(certdir)
        kwargs = {"certfile": ca.leaf_cert, "keyfile": ca.leaf_key, "ca_pem": ca.ca_cert}
    fake = FakeProvider(host=args.host, port=args.port, record_requests=False, **kwargs)
    fake.set_default(event_delay=args.event_delay, split=args.split)
    with fake:
        print(f"fake provider listening at {fake.base_url}", flush=True)
        if fake.ca_pem:
            print(f"trust this CA: {fake.ca_pem}", flush=True)
            print(f"SLUICE_TEST_HOSTS={fake.hosts_env()}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
