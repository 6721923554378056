"""Which provider call a request is, from its method and path alone.

Matched by path suffix so that gateways and reverse proxies that mount the API under a prefix
(`/anthropic/v1/messages`, `/openai/v1/chat/completions`) are recognised too. Anything else is not an LLM
call: sluice forwards it untouched and records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

# (path suffix, provider, api). Longest suffix first: count_tokens also ends in a messages-like path.
_ENDPOINTS: tuple[tuple[str, str, str], ...] = (
    ("/v1/messages/count_tokens", "anthropic", "count_tokens"),
    ("/v1/messages", "anthropic", "messages"),
    ("/chat/completions", "openai", "chat"),
    ("/v1/responses", "openai", "responses"),
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    provider: str
    api: str


def classify(method: str, path: str) -> Endpoint | None:
    """The provider API a request calls, or None when it is not a metered LLM call."""
    if method.upper() != "POST":
        return None
    bare = path.split("?", 1)[0].rstrip("/")
    for suffix, provider, api in _ENDPOINTS:
        if bare.endswith(suffix):
            return Endpoint(provider, api)
    return None
