"""Errors sluice answers itself, in the provider's own envelope so the client's error handling just works.

Anthropic: {"type": "error", "error": {"type": ..., "message": ...}}
  https://docs.anthropic.com/en/api/errors
OpenAI: {"error": {"message": ..., "type": ..., "param": null, "code": ...}}
  https://platform.openai.com/docs/guides/error-codes
"""

from __future__ import annotations

import json

# status → (anthropic error type, openai error type, openai code)
_KINDS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "invalid_request_error", None),
    401: ("authentication_error", "invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "invalid_request_error", "permission_denied"),
    429: ("rate_limit_error", "requests", "rate_limit_exceeded"),
    500: ("api_error", "server_error", None),
    502: ("api_error", "server_error", None),
    503: ("api_error", "server_error", "service_unavailable"),
    504: ("api_error", "server_error", "timeout"),
    529: ("overloaded_error", "server_error", "overloaded"),
}


def error_body(provider: str, status: int, message: str, *, code: str | None = None) -> bytes:
    """The JSON body of an error `status` for `provider` ("anthropic" or "openai"); compact, UTF-8."""
    anthropic_type, openai_type, openai_code = _KINDS.get(status, ("api_error", "server_error", None))
    if provider == "anthropic":
        body: dict[str, object] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        body = {
            "error": {"message": message, "type": openai_type, "param": None, "code": code or openai_code}
        }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sse_error_event(provider: str, status: int, message: str) -> bytes:
    """An in-stream error record, for a stream that must end early (Anthropic `event: error`)."""
    body = error_body(provider, status, message).decode()
    if provider == "anthropic":
        return f"event: error\ndata: {body}\n\n".encode()
    return f"data: {body}\n\n".encode()
