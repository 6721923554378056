"""Anthropic: the Messages API (`/v1/messages`, streamed and not) and its token count
(`/v1/messages/count_tokens`), on api.anthropic.com or any gateway that mounts them.

Keys: `x-api-key` for API keys, `Authorization: Bearer` with the `oauth-2025-04-20` beta for OAuth
(subscription) tokens. Errors: `{"type": "error", "error": {"type": ..., "message": ...}}`
(https://docs.anthropic.com/en/api/errors); in a stream, `event: error`. Overloaded is 529.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from rules.providers import Provider, WireFormat, register
from rules.providers.anthropic import cache, cache_control, request, transcript, usage

OAUTH_BETA = "oauth-2025-04-20"  # Anthropic requires it on requests carrying an OAuth bearer token

# status -> the envelope's error type
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


API_VERSION = "2023-06-01"  # https://docs.claude.com/en/api/versioning


def models_headers(key: str) -> dict[str, str]:
    """The headers of a `GET /v1/models` with an API key."""
    return {"x-api-key": key, "anthropic-version": API_VERSION}


_LIMIT_NAMES = {"rpm": "requests", "input_tpm": "input-tokens", "output_tpm": "output-tokens"}


def limit_headers(limit: str, value: int, remaining: int, reset_s: float) -> dict[str, str]:
    """`anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,reset}`, the reset as an
    RFC 3339 time, as Anthropic writes them."""
    name = _LIMIT_NAMES.get(limit)
    if name is None:
        return {}
    reset = datetime.now(UTC) + timedelta(seconds=max(0.0, reset_s))
    if reset.microsecond:  # written in whole seconds: rounded up, never a moment before the room is there
        reset = reset.replace(microsecond=0) + timedelta(seconds=1)
    prefix = f"anthropic-ratelimit-{name}-"
    return {
        prefix + "limit": str(value),
        prefix + "remaining": str(max(0, remaining)),
        prefix + "reset": reset.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sse_error_event(status: int, message: str) -> bytes:
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"


def write_credential(headers: Mapping[str, str], secret: str, kind: str) -> dict[bytes, bytes | None]:
    """An API key in `x-api-key`; an OAuth token as a bearer, with the OAuth beta added to the client's."""
    if kind == "key":
        return {b"x-api-key": secret.encode(), b"authorization": None}
    changes: dict[bytes, bytes | None] = {b"x-api-key": None, b"authorization": b"Bearer " + secret.encode()}
    betas = [beta.strip() for beta in headers.get("anthropic-beta", "").split(",") if beta.strip()]
    if OAUTH_BETA not in betas:
        changes[b"anthropic-beta"] = ",".join([*betas, OAUTH_BETA]).encode()
    return changes


ANTHROPIC = Provider(
    name="anthropic",
    hosts=("api.anthropic.com",),
    # anthropic-version, anthropic-beta (verbatim), anthropic-workspace-id, ...; Claude Code's own
    # families (x-claude-code-*, x-claude-1p-request-class, x-claude-remote-*, x-anthropic-*), x-app and
    # x-client-app. https://docs.claude.com/en/api/versioning, .../api/beta-headers
    request_headers=("x-api-key", "anthropic-*", "x-anthropic-*", "x-claude-*", "x-app", "x-client-app"),
    response_headers=("anthropic-*",),  # anthropic-organization-id, anthropic-ratelimit-*, ...
    error_body=error_body,
    sse_error_event=sse_error_event,
    write_credential=write_credential,
    key_headers=("x-api-key", "authorization"),
    overloaded_status=529,
    key_variables=("ANTHROPIC_API_KEY",),
    window_prefix="anthropic-ratelimit-unified-",
    # anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}, resets as
    # RFC 3339 times. https://docs.claude.com/en/api/rate-limits#response-headers
    limit_headers=limit_headers,
    counted_limits=re.compile(r"anthropic-ratelimit-(?P<name>[a-z0-9-]+?)-(?P<field>limit|remaining|reset)"),
    # Its subscription limits are worded for people ("You've hit your usage limit", "out of extra usage");
    # its terminal answers name the organization.
    window_words=("extra usage", "usage limit", "usage_limit"),
    terminal_words=(
        "oauth authentication is currently not allowed for this organization",
        "organization has been disabled",
        "organization is disabled",
        "credit balance is too low",
    ),
    overloaded_answers=((529, None), (None, "overloaded_error")),
    models_headers=models_headers,
    example_model="claude-opus-4-1",
)

MESSAGES = WireFormat(
    name="messages",
    provider=ANTHROPIC,
    path_suffixes=("/v1/messages",),
    read_body=usage.read_message,
    stream_events=usage.MessagesEvents,
    output_chars=usage.output_chars,
    terminal_event="message_stop",
    output_fields=("max_tokens",),
    unbounded_without_ceiling=False,  # a request without `max_tokens` is refused
    body_parts=transcript.body_parts,
    stream_parts=transcript.MessagesStream,
    outline=transcript.outline,
    rule_set=frozenset({"billing", "alias", "system", "user_id", "max_tokens", "cache"}),
    strip_billing=request.strip_billing_block,
    inject_system=request.inject_system,
    stamp_user=request.stamp_user,
    backfill_max_tokens=request.backfill_max_tokens,
    mark_cache=cache_control.mark_cache,
    count_cache_marks=cache_control.count_cache_breakpoints,
    prompt_shape=cache.prompt_shape,
    first_user_message=cache.first_user_message,
    messages_field="messages",
    system_field="system",
)

COUNT_TOKENS = WireFormat(
    name="count_tokens",
    provider=ANTHROPIC,
    path_suffixes=("/v1/messages/count_tokens",),
    billed=False,
    operation="count_tokens",
    read_body=usage.read_count,
    stream_events=usage.MessagesEvents,
    output_chars=usage.output_chars,
    terminal_event="message_stop",
    unbounded_without_ceiling=False,  # writes nothing
    outline=transcript.outline,  # laid out as a message request; its answer is a count, no content
    # What changes the count (system blocks, aliases, cache markers), not the rest; no cache to judge.
    rule_set=frozenset({"billing", "alias", "system", "cache"}),
    strip_billing=request.strip_billing_block,
    inject_system=request.inject_system,
    mark_cache=cache_control.mark_cache,
    count_cache_marks=cache_control.count_cache_breakpoints,
    first_user_message=cache.first_user_message,
    messages_field="messages",
    system_field="system",
)

register(MESSAGES, COUNT_TOKENS)
