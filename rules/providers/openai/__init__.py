"""OpenAI: Chat Completions (`/chat/completions`, under any prefix: `/v1/...`, a gateway's `/openai/v1/...`)
and Responses (`/v1/responses`), streamed and not.

Keys: `Authorization: Bearer`. Errors: `{"error": {"message", "type", "param", "code"}}`
(https://platform.openai.com/docs/guides/error-codes); in a stream, a `data:` record with the same body.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

from rules.providers import Provider, WireFormat, register
from rules.providers.openai import cache, request, transcript, usage

# status -> (the envelope's error type, its code)
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
    529: ("server_error", "overloaded"),
}


def limit_headers(limit: str, value: int, remaining: int, reset_s: float) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, the reset as a duration (`12s`), as OpenAI
    writes them; its token limit counts input and output together."""
    name = {"rpm": "requests", "input_tpm": "tokens", "output_tpm": "tokens"}.get(limit)
    if name is None:
        return {}
    milliseconds = max(0, math.ceil(reset_s * 1000))
    reset = f"{milliseconds}ms" if milliseconds < 1000 else f"{math.ceil(milliseconds / 1000)}s"
    return {
        f"x-ratelimit-limit-{name}": str(value),
        f"x-ratelimit-remaining-{name}": str(max(0, remaining)),
        f"x-ratelimit-reset-{name}": reset,
    }


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    kind, default_code = _ERROR_KINDS.get(status, ("server_error", None))
    body = {"error": {"message": message, "type": kind, "param": None, "code": code or default_code}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sse_error_event(status: int, message: str) -> bytes:
    return b"data: " + error_body(status, message) + b"\n\n"


def write_credential(headers: Mapping[str, str], secret: str, kind: str) -> dict[bytes, bytes | None]:
    """A bearer token, whatever the kind; a key the client put elsewhere is removed."""
    return {b"x-api-key": None, b"authorization": b"Bearer " + secret.encode()}


OPENAI = Provider(
    name="openai",
    hosts=("api.openai.com",),
    # OpenAI-Organization, OpenAI-Project, OpenAI-Beta.
    # https://platform.openai.com/docs/api-reference/debugging-requests
    request_headers=("openai-*",),
    response_headers=("openai-*",),  # openai-processing-ms, openai-organization, openai-version, ...
    error_body=error_body,
    sse_error_event=sse_error_event,
    write_credential=write_credential,
    key_headers=("authorization", "x-api-key"),
    key_variables=("OPENAI_API_KEY",),
    # x-ratelimit-{limit,remaining,reset}-{requests,tokens}, resets as durations (`6m0s`, `12ms`); the
    # gateways that speak its format send the same. https://platform.openai.com/docs/guides/rate-limits
    limit_headers=limit_headers,
    counted_limits=re.compile(r"x-ratelimit-(?P<field>limit|remaining|reset)-(?P<name>[a-z0-9-]+)"),
    terminal_words=("account has been deactivated", "account is not active"),
    terminal_codes=("insufficient_quota", "account_deactivated", "billing_not_active"),
    example_model="gpt-5",
)

CHAT = WireFormat(
    name="chat",
    provider=OPENAI,
    path_suffixes=("/chat/completions",),
    read_body=usage.read_chat,
    stream_events=usage.ChatEvents,
    output_chars=usage.chat_output_chars,
    terminal_event="[DONE]",
    output_fields=("max_completion_tokens", "max_tokens"),
    choices_fields=("n",),
    body_parts=transcript.chat_body_parts,
    stream_parts=transcript.ChatStream,
    outline=transcript.chat_outline,
    rule_set=frozenset({"alias", "system", "user_id", "stream_usage"}),
    inject_system=request.inject_chat_system,
    stamp_user=request.stamp_safety_identifier,
    request_stream_usage=request.request_usage_in_stream,
    usage_only_chunk=request.is_usage_only_chunk,
    prompt_shape=cache.chat_prompt_shape,
    first_user_message=cache.chat_first_user_message,
    messages_field="messages",
)

RESPONSES = WireFormat(
    name="responses",
    provider=OPENAI,
    path_suffixes=("/v1/responses",),
    read_body=usage.read_response,
    stream_events=usage.ResponsesEvents,
    output_chars=usage.responses_output_chars,
    terminal_event="response.completed",
    output_fields=("max_output_tokens",),
    body_parts=transcript.responses_body_parts,
    stream_parts=transcript.ResponsesStream,
    outline=transcript.responses_outline,
    rule_set=frozenset({"alias", "system", "user_id"}),
    inject_system=request.inject_responses_system,
    stamp_user=request.stamp_safety_identifier,
    prompt_shape=cache.responses_prompt_shape,
    first_user_message=cache.responses_first_user_message,
    messages_field="input",
    system_field="instructions",
)

register(CHAT, RESPONSES)
