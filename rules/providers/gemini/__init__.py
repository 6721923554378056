"""Google's Gemini API: `generateContent` and `streamGenerateContent?alt=sse` (and the free `countTokens`)
on generativelanguage.googleapis.com, `/v1/` or `/v1beta/models/{model}:{method}`; the model is in the
path, not the body (https://ai.google.dev/api/generate-content).

Keys: the `x-goog-api-key` header, or a `key=` query parameter. sluice writes the real key in the header
and takes a `key=` parameter out of the URL, so a key never travels in a URL upstream and never lands in a
recorded path or a flow's URL. Errors: `{"error": {"code", "message", "status", "details"?}}` with
Google's canonical status names (https://ai.google.dev/gemini-api/docs/troubleshooting); in a stream, a
`data:` record with the same body. Overloaded is 503 UNAVAILABLE. Priced as genai-prices' `google`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from rules.providers import Provider, WireFormat, register
from rules.providers.gemini import cache, request, transcript, usage

# status -> Google's canonical status name (google.rpc.Code)
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
KEY_QUERY = "key"


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    name = code or _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    body = {"error": {"code": status, "message": message, "status": name}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sse_error_event(status: int, message: str) -> bytes:
    return b"data: " + error_body(status, message) + b"\n\n"


def write_credential(headers: Mapping[str, str], secret: str, kind: str) -> dict[bytes, bytes | None]:
    """An API key in `x-goog-api-key`; an OAuth access token as a bearer. Any other key header goes."""
    if kind == "key":
        return {b"x-goog-api-key": secret.encode(), b"authorization": None, b"x-api-key": None}
    return {b"x-goog-api-key": None, b"x-api-key": None, b"authorization": b"Bearer " + secret.encode()}


GEMINI = Provider(
    name="gemini",
    hosts=("generativelanguage.googleapis.com",),
    # x-goog-api-client (the SDK's name and version), x-goog-user-project, x-goog-request-params, ...
    request_headers=("x-goog-api-key", "x-goog-*"),
    response_headers=("x-goog-*", "server-timing"),
    error_body=error_body,
    sse_error_event=sse_error_event,
    write_credential=write_credential,
    key_headers=("x-goog-api-key", "authorization", "x-api-key"),
    key_query=KEY_QUERY,
    pricing_id="google",
    key_variables=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    terminal_words=("api key was reported as leaked",),  # a key found in public, blocked for good
    # Google's ErrorInfo reasons (an invalid key is its 400, not a 401).
    terminal_codes=("API_KEY_INVALID", "CONSUMER_SUSPENDED"),
    overloaded_answers=((503, "UNAVAILABLE"),),
)


def path_model(path: str) -> str | None:
    """The model a path names: `/v1beta/models/gemini-2.5-flash:generateContent` -> `gemini-2.5-flash`."""
    head, colon, _ = path.split("?", 1)[0].rpartition(":")
    if not colon:
        return None
    _, found, model = head.rpartition("/models/")
    return model if found and model and "/" not in model else None


# Both spellings (rules/providers/gemini/fields.py): a ceiling the provider reads must not be missed.
_CONFIGS = ("generationConfig", "generation_config")

GENERATE_CONTENT = WireFormat(
    name="generate_content",
    provider=GEMINI,
    path_suffixes=(":generateContent", ":streamGenerateContent"),
    path_model=path_model,
    read_body=usage.read_body,
    stream_events=usage.GenerateEvents,
    output_chars=usage.output_chars,
    terminal_event="a chunk with a finishReason",
    rule_set=frozenset({"system"}),
    inject_system=request.inject_system,
    output_fields=tuple(f"{c}.{f}" for c in _CONFIGS for f in ("maxOutputTokens", "max_output_tokens")),
    choices_fields=tuple(f"{c}.{f}" for c in _CONFIGS for f in ("candidateCount", "candidate_count")),
    body_parts=transcript.body_parts,
    stream_parts=transcript.GenerateStream,
    outline=transcript.outline,
    prompt_shape=cache.prompt_shape,
    first_user_message=cache.first_user_message,
    messages_field="contents",
    system_field="systemInstruction",
    operation="generate_content",
)

register(GENERATE_CONTENT)
